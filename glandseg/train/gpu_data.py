"""Device-resident training data with batched augmentation on tensors.

The training images and their annotations are decoded once (at the working scale) and kept
on the training device as ``uint8`` images and ``int32`` label images; per-image maps that
need a distance transform (Ronneberger's weight map, the normalised distance to the gland
border) are computed once on the CPU and kept beside them as ``float16``. Each batch is then
cut and augmented on the device in one go:

- geometry (image, labels and maps with one sampling grid, ``grid_sample``): a random crop,
  flips and 90° rotations (always: the 8 dihedral poses), a rotation by any angle, a zoom
  (log-uniform), an elastic displacement field (coarse noise, smoothed, upsampled); the
  labels are sampled with nearest neighbour (ids never mixed, stay integers), the image and
  the maps bilinearly;
- colour (image only): H&E stain jitter in HED space (haematoxylin and eosin each scaled by
  ``stain_range``, default x0.6-1.4), brightness/contrast, Gaussian blur, pixel noise; JPEG
  compression (``jpeg_p``, off by default) on the CPU at low probability;
- targets from the augmented labels on the device: classes 0 = background, 1 = interior,
  2 = boundary band (identical to :func:`glandseg.models.targets.contour_target`).

The same code runs on CPU tensors (tests, CPU users); every random draw comes from
``(seed, step)``, so a batch is reproducible on any device of one kind.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from glandseg import GlandsegError
from glandseg.data.dataset import IGNORE_FLAG, GlasDataset
from glandseg.data.discover import Sample
from glandseg.models.targets import unet_weight_map

log = logging.getLogger(__name__)

# Ruifrok & Johnston stain vectors (rows: H, E, residual = H x E), rows normalised: the
# matrix of glandseg.data.transforms.HEDJitter.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED[2] = torch.linalg.cross(_RGB_FROM_HED[0], _RGB_FROM_HED[1])
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


@dataclass
class GpuAugment:
    """The batched augmentation. ``crop``: side of the training crops (px at the working
    scale). Probabilities are per crop; ranges are ``(low, high)``."""

    crop: int = 512
    #: Flips and 90° rotations (the 8 dihedral poses, equally likely).
    dihedral: bool = True
    #: Probability of a rotation by an angle drawn uniformly in [0, 360°).
    rotate_p: float = 0.5
    #: Zoom range (log-uniform; 1 = the working scale), probability ``scale_p``.
    scale_range: tuple[float, float] = (0.8, 1.25)
    scale_p: float = 0.5
    #: Elastic deformation: displacement field of spread ``elastic_alpha`` px smoothed over
    #: ``elastic_sigma`` px (as :class:`glandseg.data.transforms.SafeElastic`).
    elastic_p: float = 0.3
    elastic_alpha: float = 40.0
    elastic_sigma: float = 6.0
    #: H&E stain jitter: H and E optical densities each scaled by a factor in ``stain_range``
    #: and shifted by up to ``stain_bias``.
    stain_p: float = 0.8
    stain_range: tuple[float, float] = (0.6, 1.4)
    stain_bias: float = 0.02
    #: Brightness shift and contrast factor (each within +-``bc``), probability ``bc_p``.
    bc_p: float = 0.5
    bc: float = 0.15
    #: Gaussian blur (sigma in px, kernel 9), probability ``blur_p``.
    blur_p: float = 0.25
    blur_sigma: tuple[float, float] = (0.3, 2.0)
    #: Additive Gaussian noise (std in [0, 1] intensity units), probability ``noise_p``.
    noise_p: float = 0.2
    noise_std: tuple[float, float] = (0.005, 0.03)
    #: JPEG compression at a quality in ``jpeg_quality``, on the CPU (0 = never).
    jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = (50, 95)

    def __post_init__(self) -> None:
        if self.crop < 16:
            raise GlandsegError(f"crop must be at least 16 px, got {self.crop}")
        for k in ("rotate_p", "scale_p", "elastic_p", "stain_p", "bc_p", "blur_p", "noise_p",
                  "jpeg_p"):
            v = getattr(self, k)
            if not 0.0 <= v <= 1.0:
                raise GlandsegError(f"{k} must be in [0, 1], got {v}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise GlandsegError(f"scale_range must be 0 < low <= high, got {self.scale_range}")

    @classmethod
    def none(cls, crop: int) -> GpuAugment:
        """Only the crop (no flips, no colour change): for tests and validation crops."""
        return cls(crop=crop, dihedral=False, rotate_p=0, scale_p=0, elastic_p=0, stain_p=0,
                   bc_p=0, blur_p=0, noise_p=0, jpeg_p=0)


def normalised_distance(labels: np.ndarray) -> np.ndarray:
    """``float32 (H, W)``: for each gland, the Euclidean distance of its pixels to the
    nearest pixel outside it (background or another gland), divided by the gland's largest
    such distance: 1 on its medial axis' deepest point, falling to ``1 / max`` on its border;
    0 = background. ``labels``: int ``(H, W)``, 0 = background."""
    lab = np.asarray(labels)
    out = np.zeros(lab.shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)
        m = lab[sl] == i
        # the image edge is not a border: pad the crop of the gland with itself there
        pad = [(0 if s.start > 0 else 1, 0 if s.stop < n else 1)
               for s, n in zip(sl, lab.shape, strict=True)]
        mp = np.pad(m, pad, mode="edge")
        d = ndi.distance_transform_edt(mp)
        d = d[pad[0][0]:d.shape[0] - pad[0][1], pad[1][0]:d.shape[1] - pad[1][1]]
        dmax = d[m].max()
        if dmax > 0:
            out[sl][m] = (d[m] / dmax).astype(np.float32)
    return out


def contour_classes(labels: torch.Tensor, width: int = 2) -> torch.Tensor:
    """``int64 (B, H, W)`` classes 0 = background, 1 = interior, 2 = boundary band (pixels of
    a gland within ``width`` px, city-block, of its border), from ``labels`` int
    ``(B, H, W)`` (0 = background), on their device: the same as
    :func:`glandseg.models.targets.contour_target` image by image."""
    lab = labels
    border = torch.zeros(lab.shape, dtype=torch.bool, device=lab.device)
    dy = lab[:, :-1] != lab[:, 1:]
    dx = lab[:, :, :-1] != lab[:, :, 1:]
    border[:, :-1] |= dy
    border[:, 1:] |= dy
    border[:, :, :-1] |= dx
    border[:, :, 1:] |= dx
    fg = lab > 0
    border &= fg
    for _ in range(max(0, width - 1)):  # binary dilation with the 4-connected cross
        b = border.clone()
        b[:, 1:] |= border[:, :-1]
        b[:, :-1] |= border[:, 1:]
        b[:, :, 1:] |= border[:, :, :-1]
        b[:, :, :-1] |= border[:, :, 1:]
        border = b & fg
    t = fg.long()
    t[border] = 2
    return t


def _gaussian_kernels(sigma: torch.Tensor, size: int = 9) -> torch.Tensor:
    """``float (B, size)`` normalised 1-D Gaussian kernels; sigma 0 gives the identity."""
    x = torch.arange(size, dtype=torch.float32, device=sigma.device) - (size - 1) / 2
    s = sigma.clamp(min=1e-3)[:, None]
    k = torch.exp(-(x[None] ** 2) / (2 * s**2))
    return k / k.sum(1, keepdim=True)


def blur_images(x: torch.Tensor, sigma: torch.Tensor, size: int = 9) -> torch.Tensor:
    """Each image of ``float (B, C, H, W)`` blurred with its own Gaussian ``sigma`` (``(B,)``,
    px; 0 = unchanged), separably, reflecting at the borders, in one grouped convolution."""
    b, c, h, w = x.shape
    k = _gaussian_kernels(sigma, size).to(x.dtype).repeat_interleave(c, 0)  # (B*C, size)
    p = size // 2
    y = F.pad(x.reshape(1, b * c, h, w), (p, p, p, p), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def hed_jitter(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Stain jitter of ``float (B, 3, H, W)`` RGB in [0, 1]: in optical density, each image's
    H, E (and residual) concentrations ``s' = s * alpha + beta`` (``alpha``, ``beta``:
    ``(B, 3)``); returns RGB in [0, 1]."""
    m_in = _HED_FROM_RGB.to(x.device, x.dtype)
    m_out = _RGB_FROM_HED.to(x.device, x.dtype)
    od = -torch.log(x.clamp(min=1.0 / 255))
    hed = torch.einsum("bchw,cd->bdhw", od, m_in)
    hed = hed * alpha[:, :, None, None] + beta[:, :, None, None]
    return torch.exp(-torch.einsum("bdhw,dc->bchw", hed, m_out)).clamp(0, 1)


def _jpeg(x: torch.Tensor, quality: Sequence[int]) -> torch.Tensor:
    """JPEG round trip of ``float (B, 3, H, W)`` in [0, 1] on the CPU, one quality each."""
    from torchvision.io import decode_jpeg, encode_jpeg

    u8 = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    out = [decode_jpeg(encode_jpeg(im, quality=int(q))) for im, q in zip(u8, quality, strict=True)]
    return (torch.stack(out).float() / 255).to(x.device, x.dtype)


class TensorTrainData:
    """Training images on a device, batched augmentation.

    ``images``: ``uint8 (3, H, W)`` tensors; ``labels``: int ``(H, W)`` (0 = background,
    1..N glands), one per image, at the working scale. ``boundary_width`` (px) of the
    boundary class; ``sigma`` of the weight map (:func:`~glandseg.models.targets.unet_weight_map`).
    ``maps``: compute the weight map and normalised distance (:func:`normalised_distance`).

    Storage: images ``uint8 (N, 3, Hp, Wp)``, labels ``int32 (N, Hp, Wp)`` and maps
    ``float16 (N, 2, Hp, Wp)`` (weight, distance), each image padded by a margin that holds
    any crop's footprint, so a crop is a slice.
    """

    def __init__(self, images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
                 aug: GpuAugment, device: str | torch.device = "cpu", *,
                 boundary_width: int = 2, sigma: float = 5.0, maps: bool = True,
                 seed: int = 0, names: Sequence[str] | None = None) -> None:
        if not len(images) or len(images) != len(labels):
            raise GlandsegError(f"need one label image per image, got {len(images)} images and "
                                f"{len(labels)} label images")
        self.aug, self.device, self.seed = aug, torch.device(device), int(seed)
        self.boundary_width, self.maps = int(boundary_width), maps
        self.names = list(names) if names is not None else [str(i) for i in range(len(images))]
        self.sizes = torch.tensor([im.shape[-2:] for im in images], dtype=torch.long)
        hmax, wmax = (int(v) for v in self.sizes.max(0).values)
        # footprint half-side of a crop in source px: rotated, zoomed out, displaced
        self.margin = int(math.ceil(aug.crop / 2 / aug.scale_range[0] * math.sqrt(2)
                                    + (aug.elastic_alpha / 4 if aug.elastic_p > 0 else 0) + 2))
        n, m = len(images), self.margin
        img = torch.zeros((n, 3, hmax + 2 * m, wmax + 2 * m), dtype=torch.uint8)
        lab = torch.zeros((n, hmax + 2 * m, wmax + 2 * m), dtype=torch.int32)
        aux = torch.zeros((n, 2, hmax + 2 * m, wmax + 2 * m), dtype=torch.float16) if maps else None
        for i, (im, lb) in enumerate(zip(images, labels, strict=True)):
            h, w = im.shape[-2:]
            if tuple(lb.shape) != (h, w):
                raise GlandsegError(f"{self.names[i]}: labels {tuple(lb.shape)} but image "
                                    f"{(h, w)}")
            if im.dtype != torch.uint8:
                raise GlandsegError(f"{self.names[i]}: images must be uint8, got {im.dtype}")
            img[i, :, m:m + h, m:m + w] = im
            lab[i, m:m + h, m:m + w] = lb.to(torch.int32)
            if aux is not None:
                ln = lb.numpy().astype(np.int32)
                aux[i, 0, m:m + h, m:m + w] = torch.from_numpy(unet_weight_map(ln, sigma=sigma))
                aux[i, 1, m:m + h, m:m + w] = torch.from_numpy(normalised_distance(ln))
        self.images = img.to(self.device)
        self.labels = lab.to(self.device)
        self.aux = aux.to(self.device) if aux is not None else None

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], aug: GpuAugment, scale: float = 1.0,
                     device: str | torch.device = "cpu", **kw) -> TensorTrainData:
        """Decode each sample once (at working ``scale``) and build the device data. An
        annotation that leaves pixels out of the loss (GeoJSON ``Ignore*``/``Region*``) is
        an error: this pipeline trains on whole annotated images."""
        ds = GlasDataset(samples, scale=scale)
        images, labels = [], []
        for i, s in enumerate(ds.samples):
            im, lb = ds.load(i)
            if lb.numel() and int(lb.max()) >= IGNORE_FLAG:
                raise GlandsegError(f"{s.anno}: ignores pixels (GeoJSON Ignore*/Region*), which "
                                    "the device-resident pipeline does not support; train it "
                                    "with glandseg train")
            images.append(im)
            labels.append(lb.to(torch.int32))
        return cls(images, labels, aug, device, names=[s.name for s in samples], **kw)

    def __len__(self) -> int:
        return len(self.sizes)

    def nbytes(self) -> int:
        """Bytes held on the device."""
        t = [self.images, self.labels] + ([self.aux] if self.aux is not None else [])
        return sum(x.numel() * x.element_size() for x in t)

    # -- sampling ---------------------------------------------------------------------
    def indices(self, step: int, batch: int) -> torch.Tensor:
        """Image indices of batch ``step``: consecutive slices of per-epoch permutations of
        all images (epoch ``e`` shuffled from ``(seed, e)``), so every image is seen equally
        often."""
        n = len(self)
        start = step * batch
        out = []
        while len(out) < batch:
            e, r = divmod(start + len(out), n)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
            perm = torch.randperm(n, generator=g)
            out.extend(perm[r:r + batch - len(out)].tolist())
        return torch.tensor(out, dtype=torch.long)

    def batch(self, step: int, batch: int, idx: torch.Tensor | None = None) -> dict:
        """Augmented batch ``step`` (reproducible from ``(seed, step)``).

        Returns ``image`` float32 ``(B, 3, c, c)`` in [0, 1], ``labels`` int64 ``(B, c, c)``
        (0 = background, the source ids), ``target`` int64 ``(B, c, c)`` (0 background,
        1 interior, 2 boundary), ``index`` int64 ``(B,)`` (the image of each crop, on the
        CPU), and with maps ``weight`` float32 ``(B, c, c)`` (0 outside the image: no loss on
        padding) and
        ``distance`` float32 ``(B, c, c)`` in [0, 1] (0 = background), all on the device.
        ``idx``: the image of each crop (default :meth:`indices`)."""
        a, dev = self.aug, self.device
        idx = self.indices(step, batch) if idx is None else idx.long()
        b, c = len(idx), a.crop
        g = torch.Generator().manual_seed(self.seed * 7_919 + step * 104_729 + 17)

        def u(lo: float = 0.0, hi: float = 1.0, n: int = b) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=g)

        def coin(p: float) -> torch.Tensor:
            return torch.rand(b, generator=g) < p

        # --- geometry: source position of each output pixel -----------------------------
        zoom = torch.ones(b)
        if a.scale_p > 0:
            lo, hi = math.log(a.scale_range[0]), math.log(a.scale_range[1])
            zoom = torch.where(coin(a.scale_p), torch.exp(u(lo, hi)), zoom)
        theta = torch.zeros(b)
        flip = torch.ones(b)
        if a.dihedral:
            theta = torch.randint(0, 4, (b,), generator=g).float() * (math.pi / 2)
            flip = torch.where(coin(0.5), -1.0, 1.0)
        if a.rotate_p > 0:
            theta = torch.where(coin(a.rotate_p), u(0, 2 * math.pi), theta)
        sizes = self.sizes[idx].float()  # (B, 2) h, w
        # top-left of the unrotated footprint, integer, so that scale 1 / right angles keep
        # pixel centres on pixel centres; centred when the image is smaller than the crop
        foot = c / zoom
        y0 = torch.floor(u() * (sizes[:, 0] - foot).clamp(min=0)
                         + (sizes[:, 0] - foot).clamp(max=0) / 2)
        x0 = torch.floor(u() * (sizes[:, 1] - foot).clamp(min=0)
                         + (sizes[:, 1] - foot).clamp(max=0) / 2)
        cy, cx = y0 + (foot - 1) / 2, x0 + (foot - 1) / 2  # footprint centre, source px
        elastic = coin(a.elastic_p) if a.elastic_p > 0 else torch.zeros(b, dtype=torch.bool)
        field = None
        if elastic.any():
            step_px = max(1.0, a.elastic_sigma)
            gh = int(c / step_px) + 2
            noise = torch.rand(b, 2, gh, gh, generator=g) * 2 - 1
            field = noise
        color = self._color_params(g, b)
        # --- on the device ----------------------------------------------------------------
        m = self.margin
        # window: the footprint centre +- what this batch's crops reach (at most the margin)
        ext = (c / 2 / zoom) * (torch.cos(theta).abs() + torch.sin(theta).abs())
        reach = float(ext.max()) + (a.elastic_alpha / 4 if elastic.any() else 0) + 3
        half = min(m, int(math.ceil(reach)))
        wy = (torch.round(cy).long() + m - half).tolist()  # storage rows of the window
        wx = (torch.round(cx).long() + m - half).tolist()
        side = 2 * half + 1
        win_img = torch.stack([self.images[i, :, y:y + side, x:x + side]
                               for i, y, x in zip(idx.tolist(), wy, wx, strict=True)])
        win_lab = torch.stack([self.labels[i, y:y + side, x:x + side]
                               for i, y, x in zip(idx.tolist(), wy, wx, strict=True)])
        v = torch.arange(c, dtype=torch.float32, device=dev) - (c - 1) / 2
        oy, ox = torch.meshgrid(v, v, indexing="ij")  # output offsets from the crop centre
        zoom_d, fl = zoom.to(dev), flip.to(dev)
        # right angles exactly (cos(pi/2) is -4e-8 in float32: a blend of neighbours)
        cs = torch.stack([torch.cos(theta.double()), torch.sin(theta.double())])
        cs = torch.where((cs - cs.round()).abs() < 1e-9, cs.round(), cs).float().to(dev)
        cos, sin = cs[0][:, None, None], cs[1][:, None, None]
        ox_f = ox[None] * fl[:, None, None]
        sx = (cos * ox_f - sin * oy[None]) / zoom_d[:, None, None]
        sy = (sin * ox_f + cos * oy[None]) / zoom_d[:, None, None]
        if field is not None:
            f = F.interpolate(self._smooth(field.to(dev)), size=(c, c), mode="bicubic",
                              align_corners=False)
            std = f.flatten(1).std(1).clamp(min=1e-6)[:, None, None, None]
            # px spread of torchvision's field (alpha / 2 px per unit of blurred noise)
            f = f / std / (3**0.5 * 2 * math.pi**0.5 * a.elastic_sigma) * a.elastic_alpha / 2
            f = f * elastic.to(dev)[:, None, None, None] / zoom_d[:, None, None, None]
            sx, sy = sx + f[:, 0], sy + f[:, 1]
        # window coordinates: the footprint centre is at half + (cy - round(cy))
        fy = (cy - torch.round(cy)).to(dev)[:, None, None]
        fx = (cx - torch.round(cx)).to(dev)[:, None, None]
        gx = (2 * (sx + half + fx) + 1) / side - 1
        gy = (2 * (sy + half + fy) + 1) / side - 1
        grid = torch.stack([gx, gy], dim=-1)  # (B, c, c, 2)
        image = F.grid_sample(win_img.float(), grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False) / 255.0
        labels = F.grid_sample(win_lab[:, None].float(), grid, mode="nearest",
                               padding_mode="zeros", align_corners=False)[:, 0].long()
        out = {"labels": labels, "target": contour_classes(labels, self.boundary_width)}
        if self.aux is not None:
            win_aux = torch.stack([self.aux[i, :, y:y + side, x:x + side]
                                   for i, y, x in zip(idx.tolist(), wy, wx, strict=True)])
            mp = F.grid_sample(win_aux.float(), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
            out["weight"] = mp[:, 0].clamp(min=0)
            out["distance"] = mp[:, 1].clamp(0, 1) * (labels > 0).float()
        out["image"] = self._colour(image, color, g)
        out["index"] = idx
        return out

    @staticmethod
    def _smooth(noise: torch.Tensor) -> torch.Tensor:
        """Gaussian blur (sigma 1 node, kernel 5) of the coarse noise ``(B, 2, h, w)``."""
        k = _gaussian_kernels(torch.ones(1, device=noise.device), 5)[0]
        b, ch, h, w = noise.shape
        y = F.pad(noise.reshape(1, b * ch, h, w), (2, 2, 2, 2), mode="reflect")
        y = F.conv2d(y, k.view(1, 1, 1, 5).expand(b * ch, 1, 1, 5).contiguous(), groups=b * ch)
        y = F.conv2d(y, k.view(1, 1, 5, 1).expand(b * ch, 1, 5, 1).contiguous(), groups=b * ch)
        return y.reshape(b, ch, h, w)

    def _color_params(self, g: torch.Generator, b: int) -> dict:
        a = self.aug
        r = lambda: torch.rand(b, generator=g)  # noqa: E731
        p = {}
        on = r() < a.stain_p
        lo, hi = a.stain_range
        alpha = torch.ones(b, 3)
        alpha[:, :2] = torch.where(on[:, None], lo + (hi - lo) * torch.rand(b, 2, generator=g),
                                   torch.ones(b, 2))
        beta = torch.where(on[:, None], (torch.rand(b, 3, generator=g) * 2 - 1) * a.stain_bias,
                           torch.zeros(b, 3))
        p["stain"] = (on, alpha, beta)
        on = r() < a.bc_p
        p["bc"] = (on, (r() * 2 - 1) * a.bc, 1 + (r() * 2 - 1) * a.bc)
        on = r() < a.blur_p
        p["blur"] = torch.where(on, a.blur_sigma[0] + (a.blur_sigma[1] - a.blur_sigma[0]) * r(),
                                torch.zeros(b))
        on = r() < a.noise_p
        p["noise"] = torch.where(on, a.noise_std[0] + (a.noise_std[1] - a.noise_std[0]) * r(),
                                 torch.zeros(b))
        q = torch.randint(a.jpeg_quality[0], a.jpeg_quality[1] + 1, (b,), generator=g)
        p["jpeg"] = (r() < a.jpeg_p, q)
        p["noise_seed"] = int(torch.randint(0, 2**62, (1,), generator=g))
        return p

    def _colour(self, x: torch.Tensor, p: dict, g: torch.Generator) -> torch.Tensor:
        dev = x.device
        on, alpha, beta = p["stain"]
        if on.any():
            sel = on.nonzero()[:, 0].to(dev)
            x[sel] = hed_jitter(x[sel], alpha[on].to(dev), beta[on].to(dev))
        on, bright, contrast = p["bc"]
        if on.any():
            sel = on.nonzero()[:, 0].to(dev)
            xs = x[sel]
            mean = xs.mean(dim=(1, 2, 3), keepdim=True)
            cf = contrast[on].to(dev)[:, None, None, None]
            bf = bright[on].to(dev)[:, None, None, None]
            x[sel] = ((xs - mean) * cf + mean + bf).clamp(0, 1)
        if (p["blur"] > 0).any():
            on = p["blur"] > 0
            sel = on.nonzero()[:, 0].to(dev)
            x[sel] = blur_images(x[sel], p["blur"][on].to(dev))
        if (p["noise"] > 0).any():
            gd = torch.Generator(device=dev).manual_seed(p["noise_seed"])
            n = torch.randn(x.shape, generator=gd, device=dev)
            x = (x + n * p["noise"].to(dev)[:, None, None, None]).clamp(0, 1)
        on, q = p["jpeg"]
        if on.any():
            sel = on.nonzero()[:, 0]
            x[sel.to(dev)] = _jpeg(x[sel.to(dev)], q[on].tolist())
        return x.clamp(0, 1)
