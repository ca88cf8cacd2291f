import functools, torch, torch.nn.functional as F
import sfm_aign as S

@functools.lru_cache(maxsize=None)
def pixel_coords(H, W, dtype, device):
    return torch.arange(W, dtype=dtype, device=device), torch.arange(H, dtype=dtype, device=device)

class Warp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source, depth, M, c):
        u, v = pixel_coords(*source.shape[-2:], depth.dtype, depth.device)
        p = M[:, :, 0, None, None] * u + (M[:, :, 1, None, None] * v[:, None] + M[:, :, 2, None, None])  # (B,3,H,W)
        q = torch.addcmul(c[..., None], depth, p)  # (B, 3, H, W)
        z = q[:, 2:].clamp(min=1e-6)
        xy = q[:, :2] / z  # (B, 2, H, W)
        grid = xy.permute(0, 2, 3, 1)
        valid = (q[:, 2:] > 1e-6) & (xy.abs().amax(1, keepdim=True) <= 1)
        ctx.save_for_backward(source, depth, p, xy, z, q[:, 2:] < 1e-6)
        return F.grid_sample(source, grid, align_corners=True), valid

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_w, _):
        source, d, p, xy, z, clamped = ctx.saved_tensors
        g_src, g_grid = torch.ops.aten.grid_sampler_2d_backward(g_w, source, xy.permute(0, 2, 3, 1), 0, 0, True,
                                                                [ctx.needs_input_grad[0], True])
        g_q = d.new_empty(len(d), 3, *d.shape[-2:])
        torch.div(g_grid.permute(0, 3, 1, 2), z, out=g_q[:, :2])
        torch.mul(g_q[:, 0], xy[:, 0], out=g_q[:, 2]).addcmul_(g_q[:, 1], xy[:, 1])
        g_q[:, 2:].masked_fill_(clamped, 0).neg_()
        g_d = (g_q[:, 0] * p[:, 0]).addcmul_(g_q[:, 1], p[:, 1]).addcmul_(g_q[:, 2], p[:, 2])
        h = g_q * d  # (B, 3, H, W)
        u, v = pixel_coords(*d.shape[-2:], d.dtype, d.device)
        hh = h.sum(3)  # (B, 3, H)
        g_M = torch.stack([h.sum(2) @ u, hh @ v, hh.sum(2)], -1)
        return g_src, g_d[:, None], g_M, g_q.sum((2, 3))[..., None]

def inverse_warp(source, depth, pose6, K):
    B, _, H, W = source.shape
    N = K.new_tensor([[2 / (W - 1), 0, -1], [0, 2 / (H - 1), -1], [0, 0, 1]])
    NK = N @ K
    M = NK @ S.axis_angle_to_matrix(pose6[:, :3]) @ S.inverse_intrinsics(K)
    return Warp.apply(source, depth, M, NK @ pose6[:, 3:, None])

def keep_freed_memory():
    import ctypes
    libc = ctypes.CDLL(None)
    return libc.mallopt(-3, 32 << 20), libc.mallopt(-1, 1 << 30)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD

class Warp2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source, depth, M, c):
        u, v = pixel_coords(*source.shape[-2:], depth.dtype, depth.device)
        p = M[:, :, 0, None, None] * u + (M[:, :, 1, None, None] * v[:, None] + M[:, :, 2, None, None])  # (B,3,H,W)
        q = torch.addcmul(c[..., None], depth, p)  # (B, 3, H, W)
        z = q[:, 2:].clamp(min=1e-6)
        xy = q[:, :2] / z  # (B, 2, H, W)
        grid = xy.permute(0, 2, 3, 1)
        valid = (q[:, 2:] > 1e-6) & (xy.abs().amax(1, keepdim=True) <= 1)
        ctx.save_for_backward(source, depth, p, xy, z, q[:, 2:] < 1e-6)
        return F.grid_sample(source, grid, align_corners=True), valid

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_w, _):
        source, d, p, xy, z, clamped = ctx.saved_tensors
        g_src, g_grid = torch.ops.aten.grid_sampler_2d_backward(g_w, source, xy.permute(0, 2, 3, 1), 0, 0, True,
                                                                [ctx.needs_input_grad[0], True])
        g_q = d.new_empty(len(d), 3, *d.shape[-2:])
        torch.div(g_grid.permute(0, 3, 1, 2), z, out=g_q[:, :2])
        torch.mul(g_q[:, 0], xy[:, 0], out=g_q[:, 2]).addcmul_(g_q[:, 1], xy[:, 1])
        g_q[:, 2:].masked_fill_(clamped, 0)  # +s; g_q,z = -s
        g_d = (g_q[:, 0] * p[:, 0]).addcmul_(g_q[:, 1], p[:, 1]).addcmul_(g_q[:, 2], p[:, 2], value=-1)
        h = g_q * d  # (B, 3, H, W)
        u, v = pixel_coords(*d.shape[-2:], d.dtype, d.device)
        hh = h.sum(3)  # (B, 3, H)
        g_M = torch.stack([h.sum(2) @ u, hh @ v, hh.sum(2)], -1)
        g_M[:, 2].neg_()
        g_c = g_q.sum((2, 3))[..., None]
        g_c[:, 2].neg_()
        return g_src, g_d[:, None], g_M, g_c


def inverse_warp2(source, depth, pose6, K):
    B, _, H, W = source.shape
    N = K.new_tensor([[2 / (W - 1), 0, -1], [0, 2 / (H - 1), -1], [0, 0, 1]])
    NK = N @ K
    M = NK @ S.axis_angle_to_matrix(pose6[:, :3]) @ S.inverse_intrinsics(K)
    return Warp2.apply(source, depth, M, NK @ pose6[:, 3:, None])

class WarpE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source, depth, M, c):
        B, _, H, W = source.shape
        d, pix = depth.view(B, 1, H * W), S.pixel_grid(H, W, depth.dtype, depth.device)
        p = M @ pix  # (B, 3, HW)
        q = torch.addcmul(c, d, p)
        z = q[:, 2:].clamp(min=1e-6)
        xy = q[:, :2] / z  # (B, 2, HW)
        grid = xy.transpose(1, 2).view(B, H, W, 2)
        valid = (q[:, 2] > 1e-6) & (xy.abs().amax(1) <= 1)
        ctx.save_for_backward(source, d, p, grid, z, q[:, 2:] < 1e-6, pix)
        return F.grid_sample(source, grid, align_corners=True), valid.view(B, 1, H, W)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_w, _):
        source, d, p, grid, z, clamped, pix = ctx.saved_tensors
        g_src, g_grid = torch.ops.aten.grid_sampler_2d_backward(g_w, source, grid, 0, 0, True,
                                                                [ctx.needs_input_grad[0], True])
        B, HW = d.shape[0], d.shape[2]
        xy = grid.view(B, HW, 2).transpose(1, 2)
        g_q = d.new_empty(B, 3, HW)
        torch.div(g_grid.view(B, HW, 2).transpose(1, 2), z, out=g_q[:, :2])
        torch.mul(g_q[:, 0], xy[:, 0], out=g_q[:, 2]).addcmul_(g_q[:, 1], xy[:, 1])
        g_q[:, 2:].masked_fill_(clamped, 0).neg_()
        g_d = (g_q[:, 0] * p[:, 0]).addcmul_(g_q[:, 1], p[:, 1]).addcmul_(g_q[:, 2], p[:, 2])
        return g_src, g_d.view(B, 1, *g_w.shape[-2:]), (g_q * d) @ pix.T, g_q.sum(2, keepdim=True)

def inverse_warpE(source, depth, pose6, K):
    B, _, H, W = source.shape
    N = K.new_tensor([[2 / (W - 1), 0, -1], [0, 2 / (H - 1), -1], [0, 0, 1]])
    NK = N @ K
    M = NK @ S.axis_angle_to_matrix(pose6[:, :3]) @ S.inverse_intrinsics(K)
    return WarpE.apply(source, depth, M, NK @ pose6[:, 3:, None])
