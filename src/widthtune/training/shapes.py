"""Procedural geometric-shape images: a CIFAR-sized classification task that needs no download.

Every image is one anti-aliased shape drawn from a signed-distance function on the pixel grid, with a
random colour, position, scale and rotation over a noisy, tilted background. All images of a class are
drawn in one vectorised pass, so 10k images take a second or two on a laptop CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

SHAPE_NAMES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "star",
    "horizontal_bar",
    "vertical_bar",
    "diamond",
    "ellipse",
)

MAX_ROTATION_DEGREES = 20.0
SCALE_RANGE = (0.35, 0.75)
RENDER_CHUNK = 2048


def _box(u: Tensor, v: Tensor, half_width: float, half_height: float) -> Tensor:
    du = u.abs() - half_width
    dv = v.abs() - half_height
    outside = torch.sqrt(du.clamp(min=0) ** 2 + dv.clamp(min=0) ** 2)
    return outside + torch.maximum(du, dv).clamp(max=0)


def _circle(u: Tensor, v: Tensor) -> Tensor:
    return torch.hypot(u, v) - 0.9


def _square(u: Tensor, v: Tensor) -> Tensor:
    return _box(u, v, 0.75, 0.75)


def _triangle(u: Tensor, v: Tensor) -> Tensor:
    # Equilateral triangle with circumradius 1: the largest signed distance to its three edge lines.
    normals = (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)
    edges = [u * math.cos(a) + v * math.sin(a) for a in normals]
    return torch.maximum(torch.maximum(edges[0], edges[1]), edges[2]) - 0.5


def _cross(u: Tensor, v: Tensor) -> Tensor:
    return torch.minimum(_box(u, v, 0.9, 0.28), _box(u, v, 0.28, 0.9))


def _ring(u: Tensor, v: Tensor) -> Tensor:
    return (torch.hypot(u, v) - 0.7).abs() - 0.2


def _star(u: Tensor, v: Tensor) -> Tensor:
    # Five points: the boundary radius follows a triangle wave in the polar angle.
    phase = (torch.atan2(v, u) * 5 / (2 * math.pi)) % 1.0
    spike = 1.0 - (2 * phase - 1).abs()
    boundary = 0.45 + 0.55 * spike
    return 0.6 * (torch.hypot(u, v) - boundary)


def _horizontal_bar(u: Tensor, v: Tensor) -> Tensor:
    return _box(u, v, 0.95, 0.22)


def _vertical_bar(u: Tensor, v: Tensor) -> Tensor:
    return _box(u, v, 0.22, 0.95)


def _diamond(u: Tensor, v: Tensor) -> Tensor:
    a, b = 0.6, 0.95
    return (u.abs() / a + v.abs() / b - 1) * (a * b / math.hypot(a, b))


def _ellipse(u: Tensor, v: Tensor) -> Tensor:
    return 0.5 * (torch.hypot(u / 0.95, v / 0.5) - 1)


_SIGNED_DISTANCES: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
    _circle,
    _square,
    _triangle,
    _cross,
    _ring,
    _star,
    _horizontal_bar,
    _vertical_bar,
    _diamond,
    _ellipse,
)


def balanced_labels(count: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """Shuffle equal class counts (off by at most one) so generated splits are class-balanced by design."""
    return (torch.arange(count) % num_classes)[torch.randperm(count, generator=generator)]


def render_shapes(labels: Tensor, resolution: int, generator: torch.Generator) -> Tensor:
    """Draw one random shape per label so the dataset is reproducible from a seed and a label list."""
    if resolution < 4:
        raise ValueError(f"data.resolution: {resolution!r} is not allowed for shapes; choose an integer >= 4")
    count = labels.numel()
    # All random parameters are drawn up front, so the result does not depend on the chunk size.
    scale = torch.empty(count).uniform_(*SCALE_RANGE, generator=generator)
    centre = (torch.rand(count, 2, generator=generator) * 2 - 1) * (1 - scale)[:, None]
    angle = (torch.rand(count, generator=generator) * 2 - 1) * math.radians(MAX_ROTATION_DEGREES)
    background = torch.rand(count, 3, generator=generator)
    # Each foreground channel sits 0.3-0.7 away from the background (mod 1), so the shape is always visible.
    foreground = (background + 0.3 + 0.4 * torch.rand(count, 3, generator=generator)) % 1.0
    tilt = (torch.rand(count, 2, generator=generator) * 2 - 1) * 0.15
    noise_std = 0.02 + 0.1 * torch.rand(count, generator=generator)

    axis = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    grid_y, grid_x = torch.meshgrid(axis, axis, indexing="ij")
    pixels_per_unit = resolution / 2

    images = torch.empty(count, 3, resolution, resolution)
    for start in range(0, count, RENDER_CHUNK):
        chunk = slice(start, min(start + RENDER_CHUNK, count))
        n = chunk.stop - chunk.start
        dx = grid_x - centre[chunk, 0, None, None]
        dy = grid_y - centre[chunk, 1, None, None]
        cos, sin = angle[chunk].cos()[:, None, None], angle[chunk].sin()[:, None, None]
        s = scale[chunk, None, None]
        u = (dx * cos + dy * sin) / s
        v = (dy * cos - dx * sin) / s
        distance = torch.empty(n, resolution, resolution)
        chunk_labels = labels[chunk]
        for label, signed_distance in enumerate(_SIGNED_DISTANCES):
            rows = chunk_labels == label
            if rows.any():
                distance[rows] = signed_distance(u[rows], v[rows])
        # Anti-aliased coverage: distance in pixels mapped to [0, 1] over one pixel width.
        coverage = (0.5 - distance * s * pixels_per_unit).clamp(0, 1)[:, None]
        gradient = tilt[chunk, 0, None, None] * grid_x + tilt[chunk, 1, None, None] * grid_y
        backdrop = background[chunk, :, None, None] + gradient[:, None]
        picture = backdrop * (1 - coverage) + foreground[chunk, :, None, None] * coverage
        noise = torch.randn(n, 3, resolution, resolution, generator=generator)
        images[chunk] = (picture + noise * noise_std[chunk, None, None, None]).clamp(0, 1)
    return images
