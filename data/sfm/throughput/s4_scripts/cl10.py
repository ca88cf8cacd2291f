import copy, sys, torch
sys.path.insert(0, "/work/main")
import common, sfm_aign as S
a = S.get_args(["--device", "cpu", "--paired-frac", "0.05", "--adv-on", "both"])
dist = common.Dist(a.device); common.seed_everything(a.seed)
data = S.load_data(a, dist); data.update(S.training_set(data, a, dist.device))
A = S.build_nets(a, dist.device); A["D_motion"].set_memory(data["mem_motion"])
Bn = copy.deepcopy(A)
for k in Bn: Bn[k].to(memory_format=torch.channels_last)
oa, ob = S.optimisers(A, a), S.optimisers(Bn, a)
ga, gb = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
def wdiff():
    return max((p - q).abs().max().item() for k in A for p, q in zip(A[k].state_dict().values(), Bn[k].state_dict().values()))
for s in range(10):
    la = S.train_step(A, oa, S.draw_batch(data, ga, a, dist), a, dist, s)
    lb = S.train_step(Bn, ob, S.draw_batch(data, gb, a, dist), a, dist, s)
    rel = max(abs(la[k] - lb[k]) / max(abs(la[k]), 1e-12) for k in la)
    print(f"step {s + 1}: max relative loss difference {rel:.2e}, max weight difference {wdiff():.2e}")
