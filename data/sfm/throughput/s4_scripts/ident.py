import sys, hashlib, resource, torch
sys.path.insert(0, "/work/main")
import common, sfm_aign as S
if sys.argv[1] == "keep": S.keep_freed_memory()
a = S.get_args(["--device", "cpu", "--paired-frac", "0.05", "--adv-on", "both"])
dist = common.Dist(a.device); common.seed_everything(a.seed)
data = S.load_data(a, dist); data.update(S.training_set(data, a, dist.device))
nets = S.build_nets(a, dist.device); nets["D_motion"].set_memory(data["mem_motion"]); opts = S.optimisers(nets, a)
gen = torch.Generator().manual_seed(a.seed)
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
losses = [S.train_step(nets, opts, S.draw_batch(data, gen, a, dist), a, dist, s) for s in range(10)]
h = hashlib.sha256()
for k in sorted(nets):
    for n, t in nets[k].state_dict().items(): h.update(t.numpy().tobytes())
print(sys.argv[1], "faults/step", (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 10, "weights sha", h.hexdigest()[:16], "last losses", losses[-1])
