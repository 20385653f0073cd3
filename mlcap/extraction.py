"""The step between the data and the model: the model's frozen parts run once over every row.

The data module reads, checks, splits and tokenises rows and serves batches; it knows nothing of models.
The model decides what its inputs look like (image size, normalisation) and which of its parts are frozen.
This step joins them in one handoff: it works out the image preprocessing, runs each frozen encoder once per
row through the feature cache (a frozen image backbone per image and flip view, a frozen sentence encoder per
caption) and returns all of it as one ModelInputs (mlcap.data.inputs), which the caller gives to the data
module (`datamodule.use_inputs(...)`); the data module checks it and serves it in place of images and text.
"""

from __future__ import annotations

import numpy as np
import torch

from mlcap.data.datamodule import CaptionImageDataModule
from mlcap.data.datasets import ImagePreprocessing, image_transform
from mlcap.data.feature_cache import ExtractionSpec, extract_features
from mlcap.data.inputs import ModelInputs
from mlcap.models.contracts import CachedTextEncoder, ImageEncoder


def prepare_inputs(
    datamodule: CaptionImageDataModule, image: ImageEncoder, sentence: CachedTextEncoder | None = None
) -> ModelInputs:
    """The model's inputs for `datamodule` (set up; only read here): the image encoder's preprocessing and the
    cached outputs of the frozen encoders, the image backbone's when it is frozen and data.cache is on, the
    sentence encoder's always. Give the result to `datamodule.use_inputs`."""
    size = datamodule.image_size_for(image.input_size)
    preprocessing = ImagePreprocessing(size, image.mean, image.std, image.interpolation)
    features: dict[str, torch.Tensor] = {}
    if datamodule.use_cache and image.freeze:
        features = {s: image_features(datamodule, image, s, preprocessing) for s in datamodule.sources()}
    sentences: dict[str, torch.Tensor] = {}
    if sentence is not None:
        sentences = {split: sentence_states(datamodule, sentence, split) for split in datamodule.splits()}
    return ModelInputs(preprocessing, features, sentences)


def extraction_spec(encoder: ImageEncoder, preprocessing: ImagePreprocessing, views: int) -> ExtractionSpec:
    """The feature cache's key: everything that decides the stored tensors (not where they came from: a
    checkpoint's backbone, built without pretrained weights and then loaded, hits the features cached while
    it trained)."""
    interpolation = preprocessing.interpolation
    return ExtractionSpec(
        encoder=encoder.name.replace("/", "_"),  # the key is a file name (hf-hub:org/model)
        weights=encoder.cache_fingerprint(),
        image_size=preprocessing.size,
        mean=tuple(preprocessing.mean),
        std=tuple(preprocessing.std),
        views=views,
        # Only a non-default resize joins the key, so the built-in encoders keep their cached features.
        decode="pil-draft" if interpolation == "bilinear" else f"pil-draft+{interpolation}",
        output="map" if encoder.spatial else "pooled",
    )


def image_features(
    datamodule: CaptionImageDataModule, encoder: ImageEncoder, source: str, preprocessing: ImagePreprocessing
) -> torch.Tensor:
    """The frozen backbone's output for every row of one CSV (`source`), [rows, views, ...], in row order.

    Cached under the sorted image paths, so the key does not depend on the split or on row order."""
    paths, sources = datamodule.images(source)
    order = sorted(range(len(paths)), key=lambda i: str(paths[i]))
    sorted_paths = [paths[i] for i in order]
    views = datamodule.cache_views
    transform = image_transform(
        preprocessing.size,
        preprocessing.mean,
        preprocessing.std,
        train=False,
        interpolation=preprocessing.interpolation,
    )
    array = datamodule.cache.load_or_create(
        extraction_spec(encoder, preprocessing, views),
        sorted_paths,
        lambda: extract_features(
            encoder,
            sorted_paths,
            transform,
            views=views,
            batch_size=datamodule.extract_batch_size,
            num_workers=datamodule.num_workers,
            device=next(encoder.backbone.parameters()).device,
            draft_size=preprocessing.size,
            forward=encoder.cached_forward,
            sources=[sources[i] for i in order],
        ),
    )
    features = torch.empty((len(paths), *array.shape[1:]), dtype=torch.float16)
    features[torch.tensor(order)] = torch.from_numpy(np.asarray(array))
    return features


def sentence_states(
    datamodule: CaptionImageDataModule, encoder: CachedTextEncoder, split: str
) -> torch.Tensor:
    """The frozen part of the sentence encoder, once per caption of a split (cached by the exact texts)."""
    captions = datamodule.captions(split)
    if not datamodule.use_cache:
        return encoder.cached_input(captions)
    array = datamodule.cache.load_or_create_texts(
        encoder.cache_fingerprint(), captions, lambda: encoder.cached_input(captions).numpy()
    )[:, 0]
    return torch.from_numpy(np.asarray(array))
