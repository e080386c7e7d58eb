"""Feature columns of every kind turned into the tensors a model takes, fitted on the training split
only and saved beside the model as plain JSON (nothing pickled).

A batch is a dict of arrays, one per feature group (:data:`freestack.ml.contract.GROUPS`):

- ``numeric``: float32 ``[rows, n]``, the raw values of the int/float/bool columns (the model
  standardises them with its own buffers);
- ``category``: int64 ``[rows, n]``, one code per column; 0 is the unknown bucket (a value the
  training split never had, or a missing one), 1.. index the column's vocabulary;
- ``text``: int64 ``[rows, n_text, max_length]`` token ids from one tokenizer (trained on the
  training split with Hugging Face ``tokenizers``, or a Hub tokenizer), padded with ``pad_id``;
- ``image``: uint8 ``[rows, channels, height, width]``, each image decoded with Pillow and resized
  (the model normalises with the training split's per-channel mean and std, and augments in training).

Only numpy here, plus ``tokenizers`` and Pillow when a spec has text or images: the model server
encodes requests with the same code, without pandas or the rest of the project.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from freestack.ml.moments import RunningMoments

#: the column kinds a model can take, and the feature group each one goes to
KINDS = {
    "int": "numeric",
    "float": "numeric",
    "bool": "numeric",
    "category": "category",
    "text": "text",
    "image": "image",
}
PAD, UNK = "[PAD]", "[UNK]"
#: where a model version keeps its text columns' tokenizer (``tokenizers.Tokenizer.from_file`` reads it)
TOKENIZER_FILE = "tokenizer.json"


class EncodingError(ValueError):
    """A value cannot be encoded (an image that does not decode, a number that is not one)."""


@dataclass(frozen=True)
class EncoderOptions:
    """How the encoder is fitted (the spec's ``model.category``, ``model.text`` and ``model.image``)."""

    category_max_size: int = 10_000
    category_min_count: int = 1
    text_vocab_size: int = 8_000
    text_max_length: int = 64
    #: a Hub tokenizer's ``tokenizer.json`` text, or None to train one on the training split
    tokenizer_json: str | None = None
    tokenizer_source: str = "trained"
    #: add the tokenizer's special tokens ([CLS] ... [SEP]): what a pretrained transformer was trained with
    text_special_tokens: bool = False
    image_size: tuple[int, int] = (32, 32)
    image_channels: int = 3
    augment: tuple[str, ...] = ()


@dataclass
class TextEncoding:
    columns: list[str]
    max_length: int
    vocab_size: int
    pad_id: int
    source: str  # "trained" or the Hub repo the tokenizer came from
    tokenizer_json: str = field(repr=False, default="")
    special_tokens: bool = False


@dataclass
class ImageEncoding:
    column: str
    channels: int
    height: int
    width: int
    mean: list[float]
    std: list[float]
    augment: list[str] = field(default_factory=list)


@dataclass
class FeatureEncoder:
    """The feature columns in order with their kinds, and what was fitted for each group."""

    columns: list[tuple[str, str]]  # (name, group)
    category: dict[str, list[str]] = field(default_factory=dict)
    text: TextEncoding | None = None
    image: ImageEncoding | None = None

    @property
    def numeric(self) -> list[str]:
        return self.names("numeric")

    def names(self, group: str) -> list[str]:
        return [n for n, g in self.columns if g == group]

    @property
    def groups(self) -> list[str]:
        return [g for g in ("numeric", "category", "text", "image") if self.names(g)]

    @classmethod
    def fit(
        cls, columns: Mapping[str, Sequence], kinds: Mapping[str, str], options: EncoderOptions
    ) -> FeatureEncoder:
        """Fitted on the training split's ``columns`` (name -> values), whose ``kinds`` are column types."""
        return cls.fit_chunks(lambda: iter([columns]), list(columns), kinds, options)

    @classmethod
    def fit_chunks(
        cls,
        chunks: Callable[[], Iterable[Mapping[str, Sequence]]],
        names: list[str],
        kinds: Mapping[str, str],
        options: EncoderOptions,
    ) -> FeatureEncoder:
        """Fitted on the training split read chunk by chunk (``chunks()`` starts a pass; each chunk maps
        the column ``names`` to values): one pass for vocabularies and image statistics, one more to train
        a tokenizer. The result does not depend on how the split is cut into chunks."""
        enc = cls([(name, KINDS[kinds[name]]) for name in names])
        images = enc.names("image")
        if len(images) > 1:
            raise EncodingError(f"one image column per model, not {len(images)} ({images})")
        counts = {name: Counter() for name in enc.names("category")}
        pixels = RunningMoments()
        if counts or images:
            for chunk in chunks():
                for name, counter in counts.items():
                    count_values(counter, chunk[name])
                if images:
                    pixels.add(image_pixels(images[0], chunk[images[0]], options), axes=(0, 2, 3))
        for name, counter in counts.items():
            enc.category[name] = choose_vocabulary(
                counter, options.category_max_size, options.category_min_count
            )
        if enc.names("text"):
            enc.text = fit_text(enc.names("text"), chunks, options)
        if images:
            enc.image = image_encoding(images[0], pixels, options)
        return enc

    def encode(self, columns: Mapping[str, Sequence]) -> dict[str, np.ndarray]:
        """A batch (group -> array) of the rows in ``columns`` (name -> values, all of one length)."""
        missing = [n for n, _ in self.columns if n not in columns]
        if missing:
            raise EncodingError(f"missing feature column(s) {missing[:10]}")
        rows = len(columns[self.columns[0][0]]) if self.columns else 0
        out: dict[str, np.ndarray] = {}
        if self.numeric:
            out["numeric"] = encode_numeric(self.numeric, columns, rows)
        if self.category:
            out["category"] = np.stack(
                [encode_category(self.category[n], columns[n]) for n in self.names("category")], 1
            )
        if self.text is not None:
            out["text"] = encode_text(self.text, columns)
        if self.image is not None:
            out["image"] = encode_images(self.image, columns[self.image.column])
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-able; the tokenizer is left out (it is saved as its own ``tokenizer.json``)."""
        text = {k: v for k, v in asdict(self.text).items() if k != "tokenizer_json"} if self.text else None
        return {
            "columns": [list(c) for c in self.columns],
            "category": self.category,
            "text": text,
            "image": None if self.image is None else asdict(self.image),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], tokenizer_json: str = "") -> FeatureEncoder:
        text = TextEncoding(**d["text"], tokenizer_json=tokenizer_json) if d.get("text") else None
        image = ImageEncoding(**d["image"]) if d.get("image") else None
        return cls([(n, g) for n, g in d["columns"]], dict(d.get("category") or {}), text, image)

    def group_sizes(self) -> dict[str, dict[str, Any]]:
        """Per group: its columns, the width of its tensor, vocabulary sizes and shapes (ModelInputs)."""
        sizes: dict[str, dict[str, Any]] = {}
        for g in self.groups:
            names = self.names(g)
            sizes[g] = {"names": names, "size": len(names), "vocab_sizes": [], "shape": [], "pad_id": 0}
        if "category" in sizes:
            sizes["category"]["vocab_sizes"] = [len(self.category[n]) + 1 for n in self.names("category")]
        if self.text is not None:
            sizes["text"].update(
                vocab_sizes=[self.text.vocab_size],
                shape=[len(self.text.columns), self.text.max_length],
                pad_id=self.text.pad_id,
            )
        if self.image is not None:
            sizes["image"].update(shape=[self.image.channels, self.image.height, self.image.width])
        return sizes


def load_encoder(folder) -> FeatureEncoder | None:
    """The encoder of a model version folder (its ``preprocessing.json`` and ``tokenizer.json``); None
    for a model of numeric columns only, which takes a plain float32 matrix."""
    import json
    import os

    with open(os.path.join(folder, "preprocessing.json"), encoding="utf-8") as f:
        encoder = json.load(f).get("encoder")
    if not encoder:
        return None
    tokenizer = os.path.join(folder, TOKENIZER_FILE)
    text = open(tokenizer, encoding="utf-8").read() if os.path.exists(tokenizer) else ""
    return FeatureEncoder.from_dict(encoder, text)


# -- numeric and category ----------------------------------------------------------------------------


def encode_numeric(names: list[str], columns: Mapping[str, Sequence], rows: int) -> np.ndarray:
    out = np.empty((rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        try:
            out[:, j] = np.asarray(columns[name], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise EncodingError(f"{name}: expected numbers ({exc})") from None
    return out


def fit_vocabulary(values: Sequence, max_size: int, min_count: int) -> list[str]:
    """The most frequent values (as text) of the training split, ties broken by the value; at most
    ``max_size``, each seen at least ``min_count`` times. Everything else is the unknown bucket."""
    return choose_vocabulary(count_values(Counter(), values), max_size, min_count)


def count_values(counts: Counter, values: Sequence) -> Counter:
    counts.update(str(v) for v in values if v is not None and not _is_nan(v))
    return counts


def choose_vocabulary(counts: Counter, max_size: int, min_count: int) -> list[str]:
    kept = sorted((v for v, n in counts.items() if n >= min_count), key=lambda v: (-counts[v], v))
    return kept[:max_size]


def encode_category(vocabulary: list[str], values: Sequence) -> np.ndarray:
    index = {v: i + 1 for i, v in enumerate(vocabulary)}
    return np.fromiter(
        (0 if v is None or _is_nan(v) else index.get(str(v), 0) for v in values), np.int64, len(values)
    )


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


# -- text ----------------------------------------------------------------------------------------------


def fit_text(
    names: list[str], chunks: Callable[[], Iterable[Mapping[str, Sequence]]], options: EncoderOptions
) -> TextEncoding:
    """A tokenizer for the text columns: the Hub one given, or a WordPiece one trained on the training
    split (lower-cased, accents stripped, split on whitespace and punctuation), read in one pass."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece
    from tokenizers.trainers import WordPieceTrainer

    if options.tokenizer_json:
        tok = Tokenizer.from_str(options.tokenizer_json)
    else:
        tok = Tokenizer(WordPiece(unk_token=UNK))
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
        )
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = WordPieceTrainer(
            vocab_size=options.text_vocab_size, special_tokens=[PAD, UNK], show_progress=False
        )
        texts = (_text(v) for chunk in chunks() for n in names for v in chunk[n])
        tok.train_from_iterator(texts, trainer=trainer)
        tok = _ordered_vocabulary(tok)
    return TextEncoding(
        names,
        options.text_max_length,
        tok.get_vocab_size(),
        _pad_id(tok),
        options.tokenizer_source,
        tok.to_str(),
        options.text_special_tokens,
    )


def _ordered_vocabulary(tok):
    """The trained tokenizer with its ids in a fixed order (the special tokens, then the rest sorted): the
    trainer numbers tokens in hash order, which changes from process to process, and with the ids the
    embedding rows a seed gives them, so the same data and seed would train different models."""
    import json

    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    specials = sorted((t for t in vocab if t in (PAD, UNK)), key=vocab.get)
    data["model"]["vocab"] = {
        t: i for i, t in enumerate([*specials, *sorted(t for t in vocab if t not in specials)])
    }
    return Tokenizer.from_str(json.dumps(data))


def _pad_id(tok) -> int:
    for token in (PAD, "<pad>", "[pad]", "<|pad|>"):
        found = tok.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


def _text(v: Any) -> str:
    return "" if v is None or _is_nan(v) else str(v)


_TOKENIZERS: dict[int, Any] = {}


def _tokenizer(text: TextEncoding):
    """The encoding's tokenizer, loaded once per process, truncating and padding to ``max_length``."""
    key = hash(text.tokenizer_json) ^ text.max_length
    tok = _TOKENIZERS.get(key)
    if tok is None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(text.tokenizer_json)
        tok.no_padding()
        tok.enable_truncation(text.max_length)
        tok.enable_padding(length=text.max_length, pad_id=text.pad_id)
        _TOKENIZERS[key] = tok
    return tok


def encode_text(text: TextEncoding, columns: Mapping[str, Sequence]) -> np.ndarray:
    tok = _tokenizer(text)
    out = []
    for n in text.columns:
        encoded = tok.encode_batch([_text(v) for v in columns[n]], add_special_tokens=text.special_tokens)
        out.append(np.asarray([e.ids for e in encoded], dtype=np.int64).reshape(-1, text.max_length))
    return np.stack(out, 1)


# -- images --------------------------------------------------------------------------------------------


def decode_image(data: Any, channels: int, height: int, width: int) -> np.ndarray:
    """uint8 ``[channels, height, width]`` of one image's bytes (RGB or grey, resized bilinear)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, bytes) or not data:
        raise EncodingError(
            f"expected image bytes, got {type(data).__name__ if data is not None else 'nothing'}"
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB" if channels == 3 else "L").resize(
                (width, height), Image.Resampling.BILINEAR
            )
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise EncodingError(f"not a decodable image ({exc})") from None
    return arr.reshape(height, width, channels).transpose(2, 0, 1)


def encode_images(image: ImageEncoding, values: Sequence) -> np.ndarray:
    out = np.empty((len(values), image.channels, image.height, image.width), dtype=np.uint8)
    for i, v in enumerate(values):
        try:
            out[i] = decode_image(v, image.channels, image.height, image.width)
        except EncodingError as exc:
            raise EncodingError(f"row {i}, {image.column}: {exc}") from None
    return out


def image_pixels(name: str, values: Sequence, options: EncoderOptions) -> np.ndarray:
    """The images of ``values`` decoded at the options' size, as float64 in 0..1."""
    height, width = options.image_size
    pixels = encode_images(ImageEncoding(name, options.image_channels, height, width, [], []), values)
    return pixels.astype(np.float64) / 255.0


def image_encoding(name: str, pixels: RunningMoments, options: EncoderOptions) -> ImageEncoding:
    """Size and channels from the options; per-channel mean and std of the training split's pixels."""
    height, width = options.image_size
    channels = options.image_channels
    if pixels.count:
        mean, std = pixels.result(channels)
    else:
        mean, std = np.full(channels, 0.5), np.full(channels, 0.25)
    std = np.where(std < 1e-6, 1.0, std)
    return ImageEncoding(name, channels, height, width, mean.tolist(), std.tolist(), list(options.augment))


__all__ = [
    "KINDS",
    "TOKENIZER_FILE",
    "EncoderOptions",
    "EncodingError",
    "FeatureEncoder",
    "ImageEncoding",
    "TextEncoding",
    "decode_image",
    "encode_category",
    "fit_vocabulary",
    "load_encoder",
]
