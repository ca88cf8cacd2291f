import sys, time, torch, torch.nn.functional as F
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/tmp/sfmh")
import sfm_aign as S, variant as V
V.keep_freed_memory()
torch.manual_seed(0)
H, W = 48, 160
flush = torch.empty(64 << 18)  # 64 MB
def setup(B):
    src = torch.rand(B, 3, H, W); depth = (5 + 10 * torch.rand(B, 1, H, W)).requires_grad_(True)
    pose = (0.05 * torch.randn(B, 6)).requires_grad_(True)
    K = torch.tensor([[92.8, 0, 79.5], [0, 92.8, 23.5], [0, 0, 1]]).expand(B, 3, 3); gout = torch.rand(B, 3, H, W)
    w0, v0 = [t.detach() for t in S.inverse_warp(src, depth, pose, K)]
    def r():
        w, v = S.inverse_warp(src, depth, pose, K); w.backward(gout); depth.grad = pose.grad = None
    return {"copy in+out": lambda: (src.clone(), depth.detach().clone(), w0.clone(), v0.clone()), "renderer": r}
def tm(f, cold, reps=20):
    tot = 0
    for _ in range(reps):
        if cold: flush.fill_(1.0)
        t = time.thread_time(); f(); tot += time.thread_time() - t
    return tot / reps * 1e3
cs = {B: setup(B) for B in (2, 16)}
res = {}
for r in range(7):
    for B, cases in cs.items():
        for cold in (False, True):
            for k, f in cases.items(): res.setdefault((B, cold, k), []).append(tm(f, cold))
med = {k: sorted(v)[3] for k, v in res.items()}
for B in (2, 16):
    for cold in (False, True):
        c, r = med[(B, cold, "copy in+out")], med[(B, cold, "renderer")]
        print(f"B={B:2d} {'cold' if cold else 'hot '} caches: copy in+out {c:6.3f} ms, renderer {r:6.3f} ms = {r / c:5.1f}x; per frame renderer {r / B:.3f} ms")
