"""The step between the data and the model: the model's frozen parts run once over every row.

The data module reads, checks, splits and tokenises rows and serves batches; it knows nothing of models.
The model decides what its inputs look like (image size, normalisation) and which of its parts are frozen.
This step joins them: it tells the data module the image preprocessing, then runs each frozen encoder once
per row through the feature cache (a frozen image backbone per image and flip view, a frozen sentence encoder
per caption) and hands the tensors to the data module, which serves them in place of images and text.
"""

from __future__ import annotations

import numpy as np
import torch

from mlcap.data.datamodule import CaptionImageDataModule
from mlcap.data.datasets import ImagePreprocessing, image_transform
from mlcap.data.feature_cache import ExtractionSpec, extract_features
from mlcap.models.contracts import CachedTextEncoder, ImageEncoder


def prepare_inputs(
    datamodule: CaptionImageDataModule, image: ImageEncoder, sentence: CachedTextEncoder | None = None
) -> None:
    """Give `datamodule` (set up) the image encoder's preprocessing and the cached outputs of the frozen
    encoders: the image backbone's when it is frozen and data.cache is on, the sentence encoder's always."""
    datamodule.set_image_preprocessing(
        ImagePreprocessing(
            datamodule.image_size_for(image.input_size), image.mean, image.std, image.interpolation
        )
    )
    if datamodule.use_cache and image.freeze:
        for source in datamodule.sources():
            datamodule.set_features(source, image_features(datamodule, image, source))
    if sentence is not None:
        for split in datamodule.splits():
            datamodule.set_sentences(split, sentence_states(datamodule, sentence, split))


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


def image_features(datamodule: CaptionImageDataModule, encoder: ImageEncoder, source: str) -> torch.Tensor:
    """The frozen backbone's output for every row of one CSV (`source`), [rows, views, ...], in row order.

    Cached under the sorted image paths, so the key does not depend on the split or on row order."""
    paths, sources = datamodule.images(source)
    preprocessing = datamodule.image_preprocessing
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
