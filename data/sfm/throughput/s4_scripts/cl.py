import copy, sys, time, torch
sys.path.insert(0, "/work/main")
import common, sfm_aign as S
from tools import bench_util
S.keep_freed_memory()
a = S.get_args(["--device", "cpu", "--no-progress"] + sys.argv[2:])
dist = common.Dist(a.device); common.seed_everything(a.seed)
data = S.load_data(a, dist); data.update(S.training_set(data, a, dist.device))
nets_a = S.build_nets(a, dist.device)
if data["mem_motion"] is not None: nets_a["D_motion"].set_memory(data["mem_motion"])
nets_b = copy.deepcopy(nets_a)
for k in ("depth_net", "pose_net", "D_depth"):
    nets_b[k].to(memory_format=torch.channels_last)
runs = {}
for name, nets in (("default", nets_a), ("channels_last nets", nets_b)):
    runs[name] = dict(nets=nets, opts=S.optimisers(nets, a), gen=torch.Generator().manual_seed(a.seed), t=[], step=0)
n = 1024; x, y = torch.randn(n, n), torch.randn(n, n)
def mm():
    t = time.thread_time()
    for _ in range(10): x @ y
    return 2 * n**3 * 10 / (time.thread_time() - t)
r0 = runs["default"]
flops = bench_util.count_flops(lambda: S.train_step(r0["nets"], r0["opts"], S.draw_batch(data, torch.Generator().manual_seed(99), a, dist), a, dist, 0))
# count_flops ran one step on nets_a: do the same on nets_b to keep the two runs identical
r1 = runs["channels_last nets"]
S.train_step(r1["nets"], r1["opts"], S.draw_batch(data, torch.Generator().manual_seed(99), a, dist), a, dist, 0)
peaks = []
for rnd in range(int(sys.argv[1])):
    peaks.append(mm())
    for name, r in runs.items():
        t = time.thread_time()
        for _ in range(5):
            S.train_step(r["nets"], r["opts"], S.draw_batch(data, r["gen"], a, dist), a, dist, r["step"]); r["step"] += 1
        r["t"].append((time.thread_time() - t) / 5)
pk = sorted(peaks)[len(peaks) // 2]
for name, r in runs.items():
    ts = sorted(r["t"]); print(f"{name:20s} step cpu median {1e3 * ts[len(ts)//2]:.1f} ms, frac of peak {flops / ts[len(ts)//2] / pk:.3f} (blocks {min(flops / t / pk for t in ts):.3f}..{max(flops / t / pk for t in ts):.3f})")
same = all(torch.equal(p, q) for k in nets_a for p, q in zip(nets_a[k].state_dict().values(), nets_b[k].state_dict().values()))
md = max((p - q).abs().max().item() for k in nets_a for p, q in zip(nets_a[k].state_dict().values(), nets_b[k].state_dict().values()))
print("weights bit-identical after", runs["default"]["step"] + 1, "steps:", same, "max diff", md, "peak GFLOP/s", pk / 1e9)
