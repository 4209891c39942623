"""The codec API: image + LiDAR scan + calibration <-> pcic container bytes. No ROS needed.

    codec = Codec("hyper-pc-vr", quality=2.5)
    data = codec.encode(image, scan, calibration)
    image_hat = codec.decode(data, scan, calibration)

Both sides project the same scan with the same calibration (``pcic_ros.codec.projection``); only the image
is coded. The container records the model, quality and size, so any ``Codec`` decodes any file whose
model is registered.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from compressai.entropy_models import EntropyModel

from pcic_ros.codec.bitstream import (
    MAX_PIXELS,
    MAX_SIDE,
    BitstreamError,
    FrameHeader,
    ScanMismatchError,
    pack,
    stored_quality,
    unpack,
)
from pcic_ros.codec.fixed_point import FixedPointError
from pcic_ros.codec.frames import depth_tensor, image_tensor, padded_size, tensor_image
from pcic_ros.codec.projection import Calibration, CalibrationError, depth_fingerprint, equalize_depth, project_points
from pcic_ros.codec.zoo import MODELS, check_model_quality, create_model, weights_fingerprint
from pcic_ros.errors import InvalidArgumentError, PcicError
from pcic_ros.models import PointCloudCompressionModel
from pcic_ros.models.gain import quality_lambda
from pcic_ros.models.pointcloud import PointCloudFeatures
from pcic_ros.models.refinement import refine_latents, supports_refinement

__all__ = ["Codec", "EncodedFrame", "ScanError", "ScanFeatures", "default_device", "depth_input"]


class ScanError(PcicError, ValueError):
    """The scan cannot be used for this frame (wrong shape, or no point lands in the image)."""


def default_device() -> str:
    """'cuda' when a GPU is usable, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class EncodedFrame:
    """The result of ``Codec.encode_frame``."""

    data: bytes
    header: FrameHeader
    reconstruction: np.ndarray | None
    """What the decoder will output for ``data``: H x W x 3 uint8 (None when not asked for)."""

    @property
    def bits_per_pixel(self) -> float:
        return 8.0 * len(self.data) / (self.header.height * self.header.width)


@dataclass(frozen=True)
class ScanFeatures:
    """A scan made ready for coding frames of one size with one model's weights (``Codec.scan_features``),
    before the image comes: its depth map's fingerprint and the point-cloud branch's output. Encoding or
    decoding with it gives the bytes and images that the scan itself gives."""

    weights_fingerprint: bytes
    height: int
    width: int
    depth_fingerprint: bytes
    zeros_fallback: bool
    c_proj: torch.Tensor | None
    features: PointCloudFeatures | None = None


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidArgumentError(f"image must be H x W x 3 (RGB), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise InvalidArgumentError(f"image must be uint8, got {image.dtype}")
    height, width = image.shape[:2]
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE) or height * width > MAX_PIXELS:
        raise InvalidArgumentError(
            f"image of {height} x {width} is outside 1..{MAX_SIDE} per side / {MAX_PIXELS} pixels"
        )
    return image


def depth_input(
    scan: np.ndarray | None, calibration: Calibration | None, height: int, width: int, levels: int
) -> np.ndarray | None:
    """The equalised depth map (uint8, H x W) a frame is coded against, or None for the zeros fallback
    (no scan). Raises ScanError for a malformed scan or one with no point in view, CalibrationError
    when a scan comes without calibration."""
    if scan is None:
        return None
    if calibration is None:
        raise CalibrationError("a scan was given without its calibration")
    scan = np.asarray(scan)
    if scan.ndim != 2 or scan.shape[1] not in (3, 4) or not np.issubdtype(scan.dtype, np.number):
        raise ScanError(f"scan must be a numeric N x 3 or N x 4 array, got {scan.dtype} {scan.shape}")
    calibration.check_image_size(height, width)
    equalized = equalize_depth(project_points(scan, calibration, height, width), levels)
    if not equalized.any():
        raise ScanError(
            f"none of the scan's {scan.shape[0]} points lands in the {width} x {height} image; "
            "code the frame without a scan for the all-zeros fallback"
        )
    return equalized


# CompressAI's C++ rANS decoder reads the string word by word without checking its end, so a forged
# string (a container's CRC is no protection: anyone can recompute it) makes it read past the buffer
# and can crash the process. Decoding zero-pads each string by a bound on what can be read past its
# end. Per symbol the decoder reads at most one word to renormalise, and for an escaped ("bypass")
# symbol a chain of 4-bit counts then that many 4-bit digits. Past the end only zero words come in,
# which cut a chain after the state's own (at most 16) nibbles: at most about 26 words (104 bytes) per
# symbol. A chain fed by the string itself can be longer, but it asks for at most 15 digits per nibble
# of the string: about 15 bytes read past the end per byte of the string (under 18 counting whole
# words; 15.0 measured for runs of 0xff).
_OVERREAD_PER_SYMBOL = 128
_OVERREAD_PER_STRING_BYTE = 20
_OVERREAD_FIXED = 1024


class _ZeroPaddedDecoder:
    """An entropy model's coder whose decoder gets each string zero-padded past any possible read."""

    def __init__(self, coder: object) -> None:
        self._coder = coder
        self.name = coder.name

    def encode_with_indexes(self, *args: object) -> object:
        return self._coder.encode_with_indexes(*args)

    def decode_with_indexes(self, string: bytes, indexes: list[int], *tables: object) -> list[int]:
        padding = _OVERREAD_PER_SYMBOL * len(indexes) + _OVERREAD_PER_STRING_BYTE * len(string) + _OVERREAD_FIXED
        return self._coder.decode_with_indexes(string.ljust(len(string) + padding, b"\0"), indexes, *tables)


class Codec:
    """Encode and decode frames with one registered model; decoding follows each file's header.

    Args:
        model: registered model name for encoding (``pcic_ros.codec.zoo.model_names()``).
        quality: 1..4 for a single-rate model; any number in ``QUALITY_RANGE`` for a variable-rate one
            (held as the container stores it, a float32: ``bitstream.stored_quality``).
        device: 'cpu', 'cuda' or None for ``default_device()``.
        checkpoint: weights to use for ``model``/``quality`` instead of the shipped or untrained ones.
        max_decode_pixels: ``decode`` refuses frames larger than this. Decoding costs what the header
            asks for, not what the file weighs: a forged 49-byte container may ask for the format's
            largest image (``MAX_PIXELS``, about 40 s and 3 GB on one CPU core). A receiver that knows
            its cameras sets their size here.
    """

    def __init__(
        self,
        model: str = "hyper-pc-vr",
        quality: float = 4,
        device: str | None = None,
        checkpoint: str | None = None,
        max_decode_pixels: int = MAX_PIXELS,
    ) -> None:
        if max_decode_pixels < 1:
            raise InvalidArgumentError(f"max_decode_pixels must be positive, got {max_decode_pixels}")
        self.device = _check_device(device or default_device())
        self.max_decode_pixels = max_decode_pixels
        self.model_name = model
        self.quality = stored_quality(quality)
        self._checkpoint = checkpoint
        self._models: dict[tuple[str, float | None], tuple[PointCloudCompressionModel, bytes]] = {}
        self._model(model, self.quality)

    def _weights_key(self, name: str, quality: float) -> tuple[str, float | None]:
        """Which weights code (name, quality): a variable-rate model has the same for every quality."""
        return (name, None if name in MODELS and MODELS[name].variable_rate else quality)

    def _model(self, name: str, quality: float) -> tuple[PointCloudCompressionModel, bytes]:
        key = self._weights_key(name, quality)
        if key not in self._models:
            own = key == self._weights_key(self.model_name, self.quality)
            checkpoint = self._checkpoint if own else None
            model = create_model(name, quality, checkpoint=checkpoint, device=self.device)
            for module in model.modules():
                if isinstance(module, EntropyModel):
                    module.entropy_coder = _ZeroPaddedDecoder(module.entropy_coder)
            self._models[key] = (model, weights_fingerprint(model))
        return self._models[key]

    def at_quality(self, quality: float) -> Codec:
        """This codec at another quality, sharing the weights it has loaded: free for a variable-rate
        model (one network for every quality); a single-rate model loads that quality's weights once.
        A ``checkpoint`` given to this codec codes at every quality of a variable-rate model, and
        only at its own quality of a single-rate one."""
        check_model_quality(self.model_name, quality)
        other = copy.copy(self)  # shallow: the copy shares self._models, the loaded weights
        other.quality = stored_quality(quality)
        if self._weights_key(self.model_name, other.quality) != self._weights_key(self.model_name, self.quality):
            other._checkpoint = None
        other._model(other.model_name, other.quality)
        return other

    def check_effort(self, effort: int) -> int:
        """``effort`` as an int when this codec's encoder can spend it, else ValueError."""
        if isinstance(effort, bool) or not isinstance(effort, (int, np.integer)) or effort < 0:
            raise InvalidArgumentError(f"effort must be a whole number of refinement steps, 0 or more, got {effort!r}")
        if effort > 0 and not supports_refinement(self.model):
            raise InvalidArgumentError(
                f"model '{self.model_name}' cannot refine its latents (effort > 0): the HYPER family can"
            )
        return int(effort)

    @property
    def variable_rate(self) -> bool:
        """Whether this codec's model codes at any quality of QUALITY_RANGE with one network."""
        return MODELS[self.model_name].variable_rate

    @property
    def model(self) -> PointCloudCompressionModel:
        return self._model(self.model_name, self.quality)[0]

    def _depth_levels(self, model: PointCloudCompressionModel) -> int:
        return model.point_cloud.depth_levels if model.point_cloud is not None else 255

    def _scan_input(
        self,
        model: PointCloudCompressionModel,
        weights_fp: bytes,
        scan: np.ndarray | None,
        calibration: Calibration | None,
        height: int,
        width: int,
    ) -> ScanFeatures:
        """The depth map's fingerprint and c_proj of a frame (no branch features yet)."""
        uses_scan = model.scan_at_encoder or model.scan_at_decoder
        equalized = depth_input(scan, calibration, height, width, self._depth_levels(model)) if uses_scan else None
        fingerprint_map = equalized if equalized is not None else np.zeros((height, width), np.uint8)
        padded = padded_size(model.downsampling_factor, height, width)
        c_proj = depth_tensor(equalized, height, width, padded, self.device) if model.branch is not None else None
        return ScanFeatures(
            weights_fp, height, width, depth_fingerprint(fingerprint_map), uses_scan and equalized is None, c_proj
        )

    @torch.no_grad()
    def scan_features(
        self,
        scan: np.ndarray | None,
        calibration: Calibration | None,
        height: int,
        width: int,
        model: str | None = None,
        quality: float | None = None,
    ) -> ScanFeatures:
        """The scan's part of coding a ``height`` x ``width`` frame, done ahead of the image (when the
        scan arrives): projection, equalisation and the point-cloud branch. ``encode`` and ``decode``
        take it as ``features``. ``model`` and ``quality`` default to this codec's (a decoder prepares
        for the model its stream uses)."""
        name = model or self.model_name
        chosen, weights_fp = self._model(name, stored_quality(quality) if quality is not None else self.quality)
        prepared = self._scan_input(chosen, weights_fp, scan, calibration, height, width)
        return dataclasses.replace(prepared, features=chosen.scan_features(prepared.c_proj))

    def encode(
        self,
        image: np.ndarray,
        scan: np.ndarray | None,
        calibration: Calibration | None,
        effort: int = 0,
        deadline: float | None = None,
        features: ScanFeatures | None = None,
    ) -> bytes:
        """Encode one RGB frame (H x W x 3 uint8) with its scan (N x 3/4, LiDAR frame) and calibration.
        ``scan=None`` codes the frame with the all-zeros fallback; the decoder then needs no scan.
        ``features`` (``scan_features``, computed when the scan came) takes the place of scan and
        calibration, so that the image pays only for its own part.

        ``effort`` > 0 refines the frame's latents in that many optimisation steps before coding them
        (``pcic_ros.models.refinement``; HYPER-family models): fewer bits for the same decoder, at the
        price of encoder time. ``deadline`` (a ``time.monotonic()`` value) ends the refinement early.
        """
        return self.encode_frame(image, scan, calibration, False, effort, deadline, features).data

    @torch.no_grad()
    def encode_frame(
        self,
        image: np.ndarray,
        scan: np.ndarray | None,
        calibration: Calibration | None,
        reconstruct: bool = True,
        effort: int = 0,
        deadline: float | None = None,
        features: ScanFeatures | None = None,
    ) -> EncodedFrame:
        """Like ``encode``, also returning the header and, with ``reconstruct``, the image the decoder
        will produce (one synthesis pass more: an encoder that only sends leaves it out)."""
        image = _check_image(image)
        effort = self.check_effort(effort)
        model, weights_fp = self._model(self.model_name, self.quality)
        height, width = image.shape[:2]
        padded = padded_size(model.downsampling_factor, height, width)
        if features is None:
            prepared = self._scan_input(model, weights_fp, scan, calibration, height, width)
        elif scan is not None or calibration is not None:
            raise ValueError("give the scan and calibration or their features, not both")
        else:
            prepared = _check_features(features, weights_fp, height, width)
        x = image_tensor(image, self.device, padded)
        if effort == 0:
            rate = _rate(self.model_name, self.quality)
            out = model.compress(x, prepared.c_proj, reconstruct=reconstruct, features=prepared.features, **rate)
        else:
            out = self._refined(model, x, prepared, image, effort, deadline)
        header = FrameHeader(
            model=self.model_name,
            quality=self.quality,
            height=height,
            width=width,
            padded_height=padded[0],
            padded_width=padded[1],
            depth_fingerprint=prepared.depth_fingerprint,
            weights_fingerprint=weights_fp,
            zeros_fallback=prepared.zeros_fallback,
        )
        strings = [s[0] for s in out["strings"]]
        reconstruction = tensor_image(out["x_hat"], height, width) if reconstruct else None
        return EncodedFrame(pack(header, strings), header, reconstruction)

    def _refined(
        self,
        model: PointCloudCompressionModel,
        x: torch.Tensor,
        prepared: ScanFeatures,
        image: np.ndarray,
        effort: int,
        deadline: float | None,
    ) -> dict:
        """``model.compress``'s output for latents refined in ``effort`` steps, or for the encoder's own
        when those code better: both are coded and decoded, and the lower measured R + lambda * D wins,
        so refinement never makes a frame worse by the loss it pursues."""
        rate = _rate(self.model_name, self.quality)
        height, width = image.shape[:2]
        features = prepared.features
        if features is None:
            features = model.encoder_features(prepared.c_proj, reconstruct=True)
        y, z = model.analyse(x, features, **rate)
        lmbda = quality_lambda(self.quality)
        quality = rate.get("quality")
        refined = refine_latents(model, y, z, x, features, quality, lmbda, effort, (height, width), deadline)
        best_loss, best = float("inf"), None
        for latents in ((y, z), refined):
            out = model.compress_latents(*latents, features, reconstruct=True, **rate)
            bits = 8 * sum(len(string[0]) for string in out["strings"])
            error = tensor_image(out["x_hat"], height, width).astype(np.float64) - image
            loss = bits / (height * width) + lmbda * float(np.mean(error**2))
            if loss < best_loss:
                best_loss, best = loss, out
        return best

    @torch.inference_mode()
    def decode(
        self,
        data: bytes,
        scan: np.ndarray | None = None,
        calibration: Calibration | None = None,
        features: ScanFeatures | None = None,
    ) -> np.ndarray:
        """Decode a container to an H x W x 3 uint8 image. ``scan`` and ``calibration`` must be the ones
        the encoder used (unless the frame used the zeros fallback or the model does not use the scan
        at the decoder); ``features`` (``scan_features`` of them, computed ahead) may take their place.
        Raises BitstreamError (or its ScanMismatchError) for any bad input."""
        header, strings = unpack(data)
        if header.height * header.width > self.max_decode_pixels:
            raise BitstreamError(
                f"a {header.width} x {header.height} frame is larger than this decoder accepts "
                f"({self.max_decode_pixels} pixels: max_decode_pixels)"
            )
        if header.model not in MODELS:
            raise BitstreamError(f"unknown model '{header.model}' (this decoder knows {', '.join(sorted(MODELS))})")
        try:
            model, weights_fp = self._model(header.model, header.quality)
        except ValueError as error:
            raise BitstreamError(f"cannot build model '{header.model}' q{header.quality}: {error}") from None
        if weights_fp != header.weights_fingerprint:
            raise BitstreamError(
                f"coded with other weights of '{header.model}' q{header.quality} "
                f"({header.weights_fingerprint.hex()}, this decoder has {weights_fp.hex()})"
            )
        factor = model.downsampling_factor
        if header.padded_height % factor or header.padded_width % factor:
            raise BitstreamError(f"padded size is not a multiple of {factor}")
        if header.padded_height - header.height >= factor or header.padded_width - header.width >= factor:
            raise BitstreamError("padding larger than the model needs")
        c_proj = branch_features = None
        if model.branch is not None and features is not None and model.scan_at_decoder and not header.zeros_fallback:
            branch_features = _check_features(features, weights_fp, header.height, header.width).features
            if features.depth_fingerprint != header.depth_fingerprint:
                raise ScanMismatchError("the scan's features are of another depth map than the encoder's")
        elif model.branch is not None:
            equalized = None
            if model.scan_at_decoder and not header.zeros_fallback:
                if scan is None:
                    raise ScanMismatchError(
                        "this frame was coded with a LiDAR scan: pass the same scan and calibration"
                    )
                try:
                    equalized = depth_input(scan, calibration, header.height, header.width, self._depth_levels(model))
                except (ScanError, CalibrationError) as error:
                    raise ScanMismatchError(f"the decoder's scan is unusable: {error}") from None
                if depth_fingerprint(equalized) != header.depth_fingerprint:
                    raise ScanMismatchError(
                        "the decoder's depth map differs from the encoder's (another scan or calibration)"
                    )
            padded = (header.padded_height, header.padded_width)
            c_proj = depth_tensor(equalized, header.height, header.width, padded, self.device)
        shape = (header.padded_height // factor, header.padded_width // factor)
        try:
            rate = _rate(header.model, header.quality)
            out = model.decompress([[s] for s in strings], shape, c_proj, features=branch_features, **rate)
        except (RuntimeError, ValueError, FixedPointError) as error:
            # FixedPointError: forged strings decode to latents far larger than any encoder writes, and the
            # fixed-point hyper-synthesis refuses values past exact float64 integers.
            raise BitstreamError(f"entropy decoding failed: {error}") from None
        return tensor_image(out["x_hat"], header.height, header.width)


def _check_device(device: str) -> torch.device:
    """``device`` as a torch device this machine has, else ValueError."""
    try:
        checked = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InvalidArgumentError(f"unknown device '{device}' ({error}); use cpu or cuda") from None
    if checked.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device '{device}' asked for, but this machine has no usable CUDA GPU")
    if checked.type not in ("cpu", "cuda"):
        raise InvalidArgumentError(f"device '{device}' is not supported; use cpu or cuda")
    return checked


def _check_features(features: ScanFeatures, weights_fp: bytes, height: int, width: int) -> ScanFeatures:
    """``features`` when they were made for these weights and this frame size, else ScanMismatchError."""
    if features.weights_fingerprint != weights_fp:
        raise ScanMismatchError("the scan's features were computed for another model or quality")
    if (features.height, features.width) != (height, width):
        raise ScanMismatchError(
            f"the scan's features are for {features.width} x {features.height} frames, this one is {width} x {height}"
        )
    return features


def _rate(name: str, quality: float) -> dict[str, float]:
    """The quality argument of a variable-rate model's compress and decompress (none for single-rate)."""
    return {"quality": quality} if MODELS[name].variable_rate else {}


