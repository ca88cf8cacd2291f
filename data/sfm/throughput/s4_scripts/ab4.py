import sys, time, resource, torch, torch.nn.functional as F
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/tmp/sfmh")
import sfm_aign as S, variant as V
if sys.argv[2] == "keep": print("mallopt", V.keep_freed_memory())
torch.manual_seed(0)
B, H, W = 16, 48, 160
src = torch.rand(B, 3, H, W)
depth = (5 + 10 * torch.rand(B, 1, H, W)).requires_grad_(True)
pose = (0.05 * torch.randn(B, 6)).requires_grad_(True)
K = torch.tensor([[92.8, 0, 79.5], [0, 92.8, 23.5], [0, 0, 1]]).expand(B, 3, 3)
gout = torch.rand(B, 3, H, W)
w0, v0 = [t.detach() for t in S.inverse_warp(src, depth, pose, K)]
N = K.new_tensor([[2 / (W - 1), 0, -1], [0, 2 / (H - 1), -1], [0, 0, 1]])
M = (N @ K) @ S.axis_angle_to_matrix(pose.detach()[:, :3]) @ S.inverse_intrinsics(K)
xy, _ = S.Project.apply(depth.detach().reshape(B, H * W), M, (N @ K) @ pose.detach()[:, 3:, None], S.pixel_grid(H, W, torch.float32, torch.device("cpu")))
g_real = xy.transpose(1, 2).reshape(B, H, W, 2).contiguous().requires_grad_(True)
def run(f):
    def g():
        w, v = f(src, depth, pose, K); w.backward(gout); depth.grad = pose.grad = None
    return g
def gs():
    F.grid_sample(src, g_real, align_corners=True).backward(gout); g_real.grad = None
cases = {"copy in": lambda: (src.clone(), depth.detach().clone()),
         "copy in+out": lambda: (src.clone(), depth.detach().clone(), w0.clone(), v0.clone()),
         "old (Project)": run(S.inverse_warp), "new (Warp)": run(V.inverse_warp), "exact (WarpE)": run(V.inverse_warpE),
         "grid_sample alone": gs}
def tm(f, reps=20):
    f()
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t, tw = time.thread_time(), time.perf_counter()
    for _ in range(reps): f()
    return (time.thread_time() - t) / reps * 1e3, (time.perf_counter() - tw) / reps * 1e3, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / reps
res = {k: [] for k in cases}
for r in range(int(sys.argv[1])):
    for k, f in cases.items(): res[k].append(tm(f))
med = {k: [sorted(x[i] for x in v)[len(v) // 2] for i in range(3)] for k, v in res.items()}
for k, (c, w, fl) in med.items():
    print(f"{k:18s} cpu {c:6.3f} ms {c / med['copy in'][0]:6.1f}x in {c / med['copy in+out'][0]:5.1f}x in+out | wall {w:6.3f} ms {w / med['copy in'][1]:6.1f}x in {w / med['copy in+out'][1]:5.1f}x in+out | faults {fl:.0f}")
