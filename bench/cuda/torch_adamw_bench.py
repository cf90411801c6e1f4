"""torch.optim.AdamW(fused=True) on the layouts of bench/cuda/cuda_adamw_bench.cu.

usage: python3 bench/cuda/torch_adamw_bench.py [--iters 20]
CUDA events around optimizer.step(), 3 warm-up steps, median of --iters; the device-to-device
copy bandwidth (1 GiB, bytes read + written) is measured in the same run. torch's states have the
parameter's dtype (fp32 for the fp32 rows), so it moves 4 state tensors of p's size per step.
"""
import argparse
import statistics

import torch


def copy_bandwidth():
    a = torch.empty(1 << 28, dtype=torch.float32, device="cuda").uniform_()
    b = torch.empty_like(a)
    times = []
    for i in range(23):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        if i >= 3:
            times.append(s.elapsed_time(e))
    return 2 * a.numel() * 4 / (statistics.median(times) * 1e-3) / 1e9


def tinyllama():
    shapes = [(32000, 2048)]
    for _ in range(22):
        shapes += [(2048, 2048), (256, 2048), (256, 2048), (2048, 2048), (5632, 2048),
                   (5632, 2048), (2048, 5632), (2048,), (2048,)]
    shapes += [(2048,), (32000, 2048)]
    return shapes


def time_layout(shapes, dtype, iters):
    params = []
    for shp in shapes:
        p = torch.nn.Parameter(torch.empty(shp, dtype=dtype, device="cuda").uniform_(-0.1, 0.1))
        p.grad = torch.empty_like(p).uniform_(-0.01, 0.01)
        params.append(p)
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                            fused=True)
    times = []
    for i in range(iters + 3):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        opt.step()
        e.record()
        e.synchronize()
        if i >= 3:
            times.append(s.elapsed_time(e))
    numel = sum(p.numel() for p in params)
    esize = params[0].element_size()
    # p read+write, g read, exp_avg and exp_avg_sq read+write, all in p's dtype.
    bytes_moved = numel * esize * 7
    del opt, params
    torch.cuda.empty_cache()
    return statistics.median(times), bytes_moved


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    bw = copy_bandwidth()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"D2D copy bandwidth {bw:.0f} GB/s")
    rows = [
        ("1 tensor, 256M fp32", [(256 << 20,)], torch.float32),
        ("1 tensor, 256M bf16", [(256 << 20,)], torch.bfloat16),
        ("TinyLlama-1.1B layout, 201 bf16 tensors", tinyllama(), torch.bfloat16),
        ("2000 tensors x 64K fp32", [(65536,)] * 2000, torch.float32),
    ]
    print(f"{'group (torch AdamW fused)':44s} {'ms/step':>10s} {'own floor ms':>12s}")
    for name, shapes, dtype in rows:
        ms, nbytes = time_layout(shapes, dtype, args.iters)
        print(f"{name:44s} {ms:10.3f} {nbytes / (bw * 1e9) * 1e3:12.3f}")


if __name__ == "__main__":
    main()
