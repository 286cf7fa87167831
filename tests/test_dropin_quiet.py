"""Loading a pipeline from Python writes nothing to the terminal (no progress bars, no torchvision note)."""

from __future__ import annotations

import pytest

import kandi


@pytest.mark.parametrize(
    "name, hub, repo",
    [
        ("KandinskyV22PriorPipeline", "offline_hub", "kandinsky-community/kandinsky-2-2-prior"),
        ("KandinskyV22CombinedPipeline", "offline_hub", "kandinsky-community/kandinsky-2-2-decoder"),
        ("KandinskyCombinedPipeline", "k21_offline_hub", "kandinsky-community/kandinsky-2-1"),
        ("Kandinsky3Pipeline", "k3_offline_hub", "kandinsky-community/kandinsky-3"),
    ],
)
def test_loading_writes_nothing_to_stdout_or_stderr(request, capfd, name, hub, repo):
    request.getfixturevalue(hub)
    capfd.readouterr()
    getattr(kandi, name).from_pretrained(repo)
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)


def test_progress_bars_stay_enabled_for_the_users_own_transformers_loads(offline_hub):
    from transformers.utils import logging as tlog

    assert tlog.is_progress_bar_enabled()
    kandi.KandinskyV22PriorPipeline.from_pretrained("kandinsky-community/kandinsky-2-2-prior")
    assert tlog.is_progress_bar_enabled()


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("torchvision") is not None, reason="torchvision installed"
)
def test_image_processor_is_asked_for_by_its_pil_name_without_torchvision():
    # transformers would fall back to the same class, logging a warning on each 2.x load
    import transformers

    from kandi.loading.pipeline import _transformers_class

    assert _transformers_class(transformers, "CLIPImageProcessor") is transformers.CLIPImageProcessorPil
    assert _transformers_class(transformers, "CLIPTokenizer") is transformers.CLIPTokenizer
