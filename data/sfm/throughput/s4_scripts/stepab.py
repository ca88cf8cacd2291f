import os, sys, time, resource, torch
sys.path.insert(0, "/work/main")
import common, sfm_aign as S
if os.environ.get("TAG") == "keep": S.keep_freed_memory()
from tools import bench_util
a = S.get_args(["--device", "cpu", "--no-progress"])
dist = common.Dist(a.device)
common.seed_everything(a.seed)
data = S.load_data(a, dist); data.update(S.training_set(data, a, dist.device))
nets = S.build_nets(a, dist.device); opts = S.optimisers(nets, a)
gen = torch.Generator().manual_seed(a.seed)
def step(): S.train_step(nets, opts, S.draw_batch(data, gen, a, dist), a, dist, a.steps)
flops = bench_util.count_flops(step)
n = 1024; x, y = torch.randn(n, n), torch.randn(n, n)
def mm(): x @ y
def blk(f, reps, clock):
    t = clock()
    for _ in range(reps): f()
    return (clock() - t) / reps
for _ in range(3): step()
rows = []
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for b in range(int(sys.argv[1])):
    pk = [blk(mm, 20, time.thread_time), blk(mm, 20, time.perf_counter)]
    st = [0, 0]
    t0w, t0c = time.perf_counter(), time.thread_time()
    for _ in range(5): step()
    st = [(time.thread_time() - t0c) / 5, (time.perf_counter() - t0w) / 5]
    rows.append((st[0], 2 * n**3 / pk[0], st[1], 2 * n**3 / pk[1]))
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / (5 * len(rows))
fr_c = sorted(flops / s / p for s, p, _, _ in rows); fr_w = sorted(flops / s / p for _, _, s, p in rows)
sc = sorted(r[0] for r in rows); pc = sorted(r[1] for r in rows)
print(f"{os.environ.get('TAG','')}: step cpu ms median {1e3 * sc[len(sc)//2]:.1f}, peak cpu GFLOP/s median {pc[len(pc)//2] / 1e9:.1f}, "
      f"frac(cpu) median {fr_c[len(fr_c)//2]:.3f} [{fr_c[0]:.3f}..{fr_c[-1]:.3f}], frac(wall) median {fr_w[len(fr_w)//2]:.3f}, faults/step {faults:.0f}, threads {torch.get_num_threads()}")
