import sys, time, torch
sys.path.insert(0, "/work/main")
import sfm_aign as S
torch.manual_seed(0)
B, H, W = 16, 48, 160; HW = H * W
d = 5 + 10 * torch.rand(B, 1, HW)
M = torch.eye(3).expand(B, 3, 3).contiguous() + 0.01 * torch.randn(B, 3, 3); M[:, 0, 0] = 0.012; M[:, 1, 1] = 0.04
M[:, 0, 2] = -1; M[:, 1, 2] = -1
c = 0.01 * torch.randn(B, 3, 1)
pix = S.pixel_grid(H, W, torch.float32, torch.device('cpu'))
u, v = torch.arange(W, dtype=torch.float32), torch.arange(H, dtype=torch.float32)
src = torch.rand(B, 3, H, W)
p = M @ pix; q = torch.addcmul(c, d, p); xy = q[:, :2] / q[:, 2:].clamp(min=1e-6)
gplanar = xy.transpose(1, 2).reshape(B, H, W, 2); gcont = gplanar.contiguous()
gout = torch.rand(B, 3, H, W); h = torch.rand(B, 3, HW)
bwd = torch.ops.aten.grid_sampler_2d_backward
X = d * pix
cases = {
 "copy src+depth": lambda: (src.clone(), d.clone()),
 "p = M@pix (mm)": lambda: M @ pix,
 "p separable": lambda: (M[:, :, 0, None, None] * u) + (M[:, :, 1, None, None] * v[:, None] + M[:, :, 2, None, None]),
 "q = addcmul(c,d,p)": lambda: torch.addcmul(c, d, p),
 "X=d*pix": lambda: d * pix,
 "q = baddbmm(c,M,X)": lambda: torch.baddbmm(c, M, X),
 "gM = h@pix.T": lambda: h @ pix.T,
 "gM separable sums": lambda: (h.view(B, 3, H, W).sum(2) @ u, h.view(B, 3, H, W).sum(3)),
 "gM = bmm(h, X^T)": lambda: torch.bmm(h, X.transpose(1, 2)),
 "gs fwd planar grid": lambda: torch.grid_sampler_2d(src, gplanar, 0, 0, True),
 "gs fwd contig grid": lambda: torch.grid_sampler_2d(src, gcont, 0, 0, True),
 "gs bwd planar grid": lambda: bwd(gout, src, gplanar, 0, 0, True, [False, True]),
 "gs bwd contig grid": lambda: bwd(gout, src, gcont, 0, 0, True, [False, True]),
 "valid amax": lambda: (q[:, 2] > 1e-6) & (xy.abs().amax(1) <= 1),
 "valid 3 cmp": lambda: (q[:, 2] > 1e-6) & (xy[:, 0].abs() <= 1) & (xy[:, 1].abs() <= 1),
 "valid clamp trick": lambda: (q[:, 2] > 1e-6) & (xy.abs().amax(1) <= 1),
}
def tm(f, reps=20):
    f()
    t = time.perf_counter()
    for _ in range(reps): f()
    return (time.perf_counter() - t) / reps * 1e6
res = {k: [] for k in cases}
for r in range(9):
    for k, f in cases.items(): res[k].append(tm(f))
c0 = sorted(res["copy src+depth"])[4]
for k, val in res.items(): m = sorted(val)[4]; print(f"{k:24s} {m:8.1f} us {m / c0:6.1f}x copy  min {min(val):8.1f}")
