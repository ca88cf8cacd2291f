import sys, time, torch, torch.nn.functional as F
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/tmp/sfmh")
import sfm_aign as S, variant as V
V.keep_freed_memory()
torch.manual_seed(0)
B, H, W = 16, 48, 160
src = torch.rand(B, 3, H, W)
depth = (5 + 10 * torch.rand(B, 1, H, W)).requires_grad_(True)
pose = (0.05 * torch.randn(B, 6)).requires_grad_(True)
K = torch.tensor([[92.8, 0, 79.5], [0, 92.8, 23.5], [0, 0, 1]]).expand(B, 3, 3).contiguous()
gout = torch.rand(B, 3, H, W)
pix = S.pixel_grid(H, W, torch.float32, torch.device("cpu"))
def plain(src, depth, pose, K):
    N = K.new_tensor([[2 / (W - 1), 0, -1], [0, 2 / (H - 1), -1], [0, 0, 1]])
    NK = N @ K
    M = NK @ S.axis_angle_to_matrix(pose[:, :3]) @ S.inverse_intrinsics(K)
    q = depth.view(B, 1, -1) * (M @ pix) + NK @ pose[:, 3:, None]
    z = q[:, 2:].clamp(min=1e-6)
    xy = q[:, :2] / z
    valid = (q[:, 2] > 1e-6) & (xy.abs().amax(1) <= 1)
    return F.grid_sample(src, xy.transpose(1, 2).reshape(B, H, W, 2), align_corners=True), valid
t0 = time.perf_counter()
cw = torch.compile(plain)
w, v = cw(src, depth, pose, K); w.backward(gout)
print("compile s", time.perf_counter() - t0)
a, va = S.inverse_warp(src, depth, pose, K)
ga = torch.autograd.grad((a * gout).sum(), (depth, pose)); gb = torch.autograd.grad((cw(src, depth, pose, K)[0] * gout).sum(), (depth, pose))
print("max fwd diff", (a - w).abs().max().item(), "grad rel", [((x - y).abs().max() / x.abs().max()).item() for x, y in zip(ga, gb)])
def run(f):
    def g():
        w, v = f(src, depth, pose, K); w.backward(gout); depth.grad = pose.grad = None
    return g
cases = {"copy in": lambda: (src.clone(), depth.detach().clone()),
         "copy in+out": lambda: (src.clone(), depth.detach().clone(), a.detach().clone(), va.clone()),
         "current": run(S.inverse_warp), "compiled": run(cw)}
def tm(f, reps=20):
    f(); t = time.thread_time()
    for _ in range(reps): f()
    return (time.thread_time() - t) / reps * 1e3
res = {k: [] for k in cases}
for r in range(7):
    for k, f in cases.items(): res[k].append(tm(f))
med = {k: sorted(v)[3] for k, v in res.items()}
for k, c in med.items(): print(f"{k:12s} cpu {c:6.3f} ms {c / med['copy in']:6.1f}x in {c / med['copy in+out']:5.1f}x in+out")
