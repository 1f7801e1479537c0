"""DINOv2 features through bow_gym against the official model, before and after the position fix.

The official DINOv2 ViT (facebookresearch/dinov2, ``dinov2/models/vision_transformer.py``) keeps
the 37 x 37 position embedding of its 518 px training size and resizes it on every forward pass:
bicubic, ``antialias=False`` and the scale factor ``(grid + 0.1) / 37`` for the models without
registers; ``antialias=True`` to the size ``grid`` for the ``_reg`` models. bow_gym used to let
timm resize it once at load time (bicubic, ``antialias=True``, to the size ``grid``: the **old**
rule, reproduced here with the very call timm's checkpoint filter makes); it now applies the
official rule (:func:`bow_gym.backbones.dinov2.official_pos_embed`, the **new** rule).

For each model, a timm DINOv2 is built at 518 px with seeded random weights, every parameter
perturbed (layer scales set near 0.1 so that every block matters; timm initialises them at 1e-5)
and its position embedding replaced by a **smooth** field (a few random low-frequency cosines per
channel) or a **rough** one (i.i.d. Gaussian), both with the standard deviation of the patch
embeddings so that position weighs as much as content. Its weights are written in the official key
layout and run through :func:`official_forward`, a forward pass written from the official code's
description (it shares no code with timm or bow_gym): the reference. The timm model then runs with
the old and with the new embedding at each input size. Reported per model, size and embedding:
per-patch cosine similarity to the reference (min and mean over all patches of all images), the
largest absolute difference, and the share of patch pairs (within an image) whose "similarity >
0.8" decision, the propagation rule of the environment, differs from the reference's.

Images: the embedded synthetic polyp images (no real data needed). Timm's names
(``vit_small_patch14_dinov2`` ...) are the same models as the short names and are not listed
again. ViT-L and ViT-g take minutes per size on a CPU: pick them with ``--names`` and ``--sizes``.

Run: ``python -m benchmarks.dinov2_fidelity`` (``--help``); last line
``min_cosine_new: <value>``. Writes ``fidelity.csv``/``.json``, ``fidelity.png`` and
``run.json`` under ``benchmarks/results/dinov2_fidelity/<run>/``.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np

#: Side of the official position-embedding grid (518 px / 14).
OFFICIAL_GRID = 37
#: Every DINOv2 attention head has 64 channels (384/6, 768/12, 1024/16, 1536/24).
HEAD_DIM = 64
#: The similarity threshold of the propagation rule.
THRESHOLD = 0.8
#: Pos-embedding kinds measured.
KINDS = ("smooth", "rough")


# ------------------------------------------------------------------------ the official reference


def official_state_dict(model: Any, seed: int = 0) -> dict[str, Any]:
    """The weights of a timm DINOv2 built at 518 px, in the official checkpoint layout.

    Official keys: ``cls_token``, ``pos_embed`` (``1 + 37 * 37`` tokens, class position first,
    also with registers), ``mask_token``, ``register_tokens`` (``_reg`` only),
    ``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,ls2.gamma}``,
    ``blocks.N.mlp.fc1/fc2`` (``mlp.w12/w3``, SwiGLU, for ViT-g) and ``norm.*``. timm folds the
    class position into ``cls_token`` for register models; a random class position is drawn
    (seeded) and subtracted, so timm's conversion gives the model's values back.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    state = dict(model.state_dict())  # detached views: no copy of a 4.4 GB ViT-g
    dim = state["cls_token"].shape[-1]
    out: dict[str, torch.Tensor] = {}
    if "reg_token" in state:
        pos0 = 0.1 * torch.randn(1, 1, dim, generator=gen)
        out["cls_token"] = state.pop("cls_token") - pos0
        out["pos_embed"] = torch.cat([pos0, state.pop("pos_embed")], dim=1)
        out["register_tokens"] = state.pop("reg_token")
    out["mask_token"] = 0.1 * torch.randn(1, dim, generator=gen)
    # timm packs SwiGLU as fc1 (both halves) and fc2; the official names are w12 and w3.
    swiglu = state["blocks.0.mlp.fc1.weight"].shape[0] == 2 * state["blocks.0.mlp.fc2.weight"].shape[1]
    for key, value in state.items():
        if swiglu:
            key = key.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")
        out[key] = value
    return out


def official_patch_pos(patch_pos: Any, grid: int, registers: bool) -> Any:
    """The official run-time resize of a ``(1, M * M, D)`` patch position embedding."""
    import torch.nn.functional as F

    m = round(math.sqrt(patch_pos.shape[1]))
    if grid == m:  # the official code returns the stored embedding unchanged
        return patch_pos
    dim = patch_pos.shape[-1]
    grid_map = patch_pos.float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if registers:  # interpolate_antialias=True, interpolate_offset=0
        out = F.interpolate(grid_map, size=(grid, grid), mode="bicubic", antialias=True)
    else:  # interpolate_antialias=False, interpolate_offset=0.1: a scale factor, not a size
        s = (grid + 0.1) / m
        out = F.interpolate(grid_map, scale_factor=(s, s), mode="bicubic", antialias=False)
    return out.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)


def _layer_norm(x: Any, sd: dict[str, Any], name: str) -> Any:
    import torch.nn.functional as F

    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps=1e-6)


def official_forward(sd: dict[str, Any], x: Any) -> Any:
    """``x_norm_patchtokens`` of the official ViT with weights ``sd`` (official layout), ``(B, N, D)``.

    Written out from the official model's description: conv patch embedding; class token; position
    embedding (resized by :func:`official_patch_pos`); register tokens inserted after the class
    token *after* the positions are added; pre-norm blocks ``x + ls1 * attn(norm1(x))``,
    ``x + ls2 * ffn(norm2(x))`` (softmax attention, 64-channel heads; GELU MLP or SwiGLU
    ``w3(silu(a) * b)`` with ``a, b = w12(x).chunk(2)``); final LayerNorm (eps 1e-6 everywhere).
    """
    import torch
    import torch.nn.functional as F

    weight = sd["patch_embed.proj.weight"]
    t = F.conv2d(x, weight, sd["patch_embed.proj.bias"], stride=weight.shape[-1])
    b, dim, gh, gw = t.shape
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), t], dim=1)
    pos = sd["pos_embed"]
    t = t + torch.cat([pos[:, :1], official_patch_pos(pos[:, 1:], gh, "register_tokens" in sd)],
                      dim=1)
    n_reg = 0
    if "register_tokens" in sd:
        n_reg = sd["register_tokens"].shape[1]
        t = torch.cat([t[:, :1], sd["register_tokens"].expand(b, -1, -1), t[:, 1:]], dim=1)
    heads = dim // HEAD_DIM
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p = f"blocks.{i}."
        h = _layer_norm(t, sd, p + "norm1")
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(b, -1, 3, heads, HEAD_DIM).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * HEAD_DIM ** -0.5, dim=-1)
        a = (attn @ v).transpose(1, 2).reshape(b, -1, dim)
        t = t + sd[p + "ls1.gamma"] * F.linear(a, sd[p + "attn.proj.weight"],
                                               sd[p + "attn.proj.bias"])
        h = _layer_norm(t, sd, p + "norm2")
        if p + "mlp.w12.weight" in sd:
            x1, x2 = F.linear(h, sd[p + "mlp.w12.weight"], sd[p + "mlp.w12.bias"]).chunk(2, -1)
            h = F.linear(F.silu(x1) * x2, sd[p + "mlp.w3.weight"], sd[p + "mlp.w3.bias"])
        else:
            h = F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
            h = F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        t = t + sd[p + "ls2.gamma"] * h
    return _layer_norm(t, sd, "norm")[:, 1 + n_reg:]


# ------------------------------------------------------------------------- models and embeddings


def perturb_(model: Any, seed: int) -> None:
    """Moves every parameter of ``model`` off its initial value (seeded), in place.

    Layer scales become about 0.1 (timm initialises them at 1e-5, which would leave the blocks
    inert); everything else gets Gaussian noise of standard deviation 0.02.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(".gamma"):
                p.copy_(0.1 + 0.02 * noise)
            else:
                p.add_(0.02 * noise)


def pos_field(kind: str, grid: int, dim: int, std: float, seed: int) -> Any:
    """A ``(1, grid * grid, dim)`` position field: ``"smooth"`` or ``"rough"``, of std ``std``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    if kind == "rough":
        field = torch.randn(dim, grid, grid, generator=gen)
    elif kind == "smooth":
        # Four cosines per channel, at most 1.5 cycles across the grid.
        yy, xx = torch.meshgrid(torch.arange(grid) / grid, torch.arange(grid) / grid,
                                indexing="ij")
        field = torch.zeros(dim, grid, grid)
        for _ in range(4):
            amp = torch.randn(dim, 1, 1, generator=gen)
            fy, fx = (torch.rand(2, dim, 1, 1, generator=gen) * 3.0 - 1.5)
            phase = torch.rand(dim, 1, 1, generator=gen) * 2 * math.pi
            field += amp * torch.cos(2 * math.pi * (fy * yy + fx * xx) + phase)
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    field = field / field.std() * std
    return field.permute(1, 2, 0).reshape(1, grid * grid, dim)


def set_pos_field_(model: Any, kind: str, seed: int) -> None:
    """Puts a :func:`pos_field` with the patch embeddings' std into a model built at 518 px."""
    import torch

    with torch.no_grad():
        probe = images_tensor(OFFICIAL_GRID * 14, 1, seed)
        std = float(model.patch_embed(probe).std())
        n_prefix = 0 if model.no_embed_class else 1
        model.pos_embed[:, n_prefix:] = pos_field(kind, OFFICIAL_GRID, model.embed_dim, std, seed)


def old_rule_patch_pos(patch_pos: Any, grid: int) -> Any:
    """The old loader's resize: timm's load-time ``resample_abs_pos_embed`` (bicubic, antialias)."""
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(patch_pos, new_size=[grid, grid], num_prefix_tokens=0,
                                  interpolation="bicubic", antialias=True)


def new_rule_patch_pos(patch_pos: Any, grid: int, short: str) -> Any:
    """bow_gym's resize (what :class:`~bow_gym.backbones.DinoV2Backbone` puts in the model)."""
    from bow_gym.backbones.dinov2 import POS_EMBED_RULES, official_pos_embed

    return official_pos_embed(patch_pos, grid, POS_EMBED_RULES[short])


def timm_patch_tokens(model: Any, x: Any, patch_pos: Any) -> Any:
    """The timm model's last-layer patch tokens with ``patch_pos`` as its patch positions."""
    import torch

    full = model.pos_embed.detach().clone()
    n_prefix = 0 if model.no_embed_class else 1
    model.set_input_size(img_size=(x.shape[-2], x.shape[-1]))
    try:
        with torch.no_grad():
            model.pos_embed.copy_(torch.cat([full[:, :n_prefix], patch_pos], dim=1))
            return model.forward_features(x)[:, model.num_prefix_tokens:]
    finally:
        # Back to the stored 37 x 37 embedding for the next size.
        model.set_input_size(img_size=(OFFICIAL_GRID * 14, OFFICIAL_GRID * 14))
        with torch.no_grad():
            model.pos_embed.copy_(full)


def compare(feats: Any, ref: Any) -> dict[str, float]:
    """Per-patch cosine, largest difference and flipped ``> 0.8`` decisions vs the reference."""
    import torch.nn.functional as F

    f, r = feats.double(), ref.double()
    cos = F.cosine_similarity(f, r, dim=-1)
    fn, rn = F.normalize(f, dim=-1), F.normalize(r, dim=-1)
    sim_f, sim_r = fn @ fn.transpose(1, 2), rn @ rn.transpose(1, 2)
    n = sim_f.shape[-1]
    upper = np.triu(np.ones((n, n), bool), k=1)
    dec_f = (sim_f > THRESHOLD).numpy()[:, upper]
    dec_r = (sim_r > THRESHOLD).numpy()[:, upper]
    return {"cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
            "max_abs_diff": float((f - r).abs().max()),
            "flip_share": float((dec_f != dec_r).mean()),
            "ref_pairs_above": float(dec_r.mean())}


def images_tensor(size: int, n_images: int, seed: int) -> Any:
    """``n_images`` synthetic polyp images, resized to ``size`` and ImageNet-normalised."""
    import cv2
    import torch

    from bow_gym.datasets import make_dataset

    ds = make_dataset("synthetic", n_images=n_images, size=max(size, 160), seed=seed)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    batch = []
    for i in range(n_images):
        im = ds[i].image
        im = cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA
                        if min(im.shape[:2]) >= size else cv2.INTER_LINEAR)
        batch.append(((im.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(batch))


def build_model(short: str, seed: int, depth: int | None = None) -> Any:
    """The timm model of ``short`` at 518 px, random (seeded) and perturbed.

    ``depth`` overrides the number of blocks (tests use 2 to keep ViT-g small).
    """
    import timm
    import torch

    from bow_gym.backbones.dinov2 import DINOV2_MODELS

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(DINOV2_MODELS[short].split(".")[0], pretrained=False,
                                  num_classes=0, img_size=OFFICIAL_GRID * 14,
                                  **({} if depth is None else {"depth": depth}))
    perturb_(model, seed)
    return model.eval()


def measure(short: str, sizes: list[int], n_images: int, seed: int) -> list[dict[str, Any]]:
    """Rows of the table for one model (all sizes and embedding kinds)."""
    import torch

    t0 = time.perf_counter()
    model = build_model(short, seed)
    rows = []
    n_prefix = 0 if model.no_embed_class else 1
    for k, kind in enumerate(KINDS):
        set_pos_field_(model, kind, seed + 1 + k)
        sd = official_state_dict(model, seed)
        for size in sizes:
            t1 = time.perf_counter()
            x = images_tensor(size, n_images, seed)
            grid = size // 14
            with torch.no_grad():
                ref = official_forward(sd, x)
            patch_pos = model.pos_embed.detach()[:, n_prefix:]
            old_pos = old_rule_patch_pos(patch_pos, grid)
            new_pos = new_rule_patch_pos(patch_pos, grid, short)
            new = timm_patch_tokens(model, x, new_pos)
            old = new if torch.equal(old_pos, new_pos) else timm_patch_tokens(model, x, old_pos)
            for rule, feats in (("old", old), ("new", new)):
                rows.append({"name": short, "size": size, "grid": grid, "pos_embed": kind,
                             "rule": rule, **compare(feats, ref), "images": n_images,
                             "seconds": round(time.perf_counter() - t1, 1)})
            for row in rows[-2:]:
                print(f"{short:18s} {size:4d}px {kind:6s} {row['rule']}: cos min "
                      f"{row['cos_min']:.7f} mean {row['cos_mean']:.7f}  max|diff| "
                      f"{row['max_abs_diff']:.1e}  flips {row['flip_share']:.4f} (of pairs "
                      f"{row['ref_pairs_above']:.4f} above {THRESHOLD})", flush=True)
    print(f"{short}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def plot(rows: list[dict[str, Any]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.lib import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = list(dict.fromkeys(f"{r['name']}\n{r['size']}px" for r in rows))
    xs = np.arange(len(labels))
    for ax, kind in zip(axes, KINDS, strict=True):
        for j, (rule, colour) in enumerate((("old", "tab:red"), ("new", "tab:green"))):
            vals = {f"{r['name']}\n{r['size']}px": 1.0 - r["cos_min"] for r in rows
                    if r["pos_embed"] == kind and r["rule"] == rule}
            ax.bar(xs + (j - 0.5) * 0.4, [max(vals.get(lb, np.nan), 1e-9) for lb in labels],
                   0.4, color=colour, label=f"{rule} rule")
        ax.set_yscale("log")
        ax.axhline(1e-4, color="k", lw=0.8, ls="--", label="1 - 0.9999")
        ax.set_xticks(xs, labels, fontsize=6, rotation=90)
        ax.set_ylabel("1 - min per-patch cosine to the official model")
        ax.set_title(f"{kind} position embedding")
        ax.legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    from bow_gym.backbones.dinov2 import DINOV2_MODELS

    p = argparse.ArgumentParser(prog="python -m benchmarks.dinov2_fidelity", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--names", default=",".join(DINOV2_MODELS),
                   help="comma-separated short names (default: all eight)")
    p.add_argument("--sizes", default="224,518", help="input sizes in px, multiples of 14")
    p.add_argument("--images", type=int, default=2, help="synthetic images per size (default 2)")
    p.add_argument("--seed", type=int, default=0, help="weights, embeddings and images")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--run", default="random_weights",
                   help="run name: writes to benchmarks/results/dinov2_fidelity/NAME/")
    p.add_argument("--out", metavar="DIR", help="output folder (overrides --run's)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    unknown = [n for n in names if n not in DINOV2_MODELS]
    if unknown or not names:
        p.error(f"--names: expected a subset of {', '.join(DINOV2_MODELS)}, got {args.names!r}")
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not sizes or any(s <= 0 or s % 14 for s in sizes):
        p.error(f"--sizes must be positive multiples of 14, got {args.sizes!r}")
    if args.images < 1:
        p.error(f"--images must be >= 1, got {args.images}")

    import torch

    from benchmarks import lib

    if args.threads:
        torch.set_num_threads(args.threads)
    run = lib.start_run("dinov2_fidelity", argv, args.out, args.run)
    out = run.out
    rows = []
    for short in names:
        rows.extend(measure(short, sizes, args.images, args.seed))
    lib.write_csv(out / "fidelity.csv", rows)
    lib.write_json(out / "fidelity.json", {"rows": rows, "settings": vars(args),
                                           "threads": torch.get_num_threads()})
    plot(rows, out / "fidelity.png")
    run.record(seeds=[args.seed],
               protocol="random perturbed weights (seeded), smooth and rough 37x37 position "
                        "embeddings; reference: the official forward written out in this script",
               datasets=["synthetic"])
    new_min = min(r["cos_min"] for r in rows if r["rule"] == "new")
    print(f"wrote {out}/fidelity.csv, fidelity.json, fidelity.png, run.json")
    print(f"min_cosine_new: {new_min:.7f}")


if __name__ == "__main__":
    main()
