"""The synthetic clips that the Docker test feeds to the image (``python -m mirex_vi.synth``)."""

import numpy as np
import soundfile as sf

from mirex_vi.synth import CLIP_PEAK, SR, main


def test_synth_writes_six_ten_second_16_bit_mono_clips(tmp_path):
    main([str(tmp_path)])
    names = sorted(p.stem for p in tmp_path.iterdir())
    assert names == ["chirp", "chord_c", "melody", "melody_cover", "tone_a4", "tone_c5"]
    for path in tmp_path.iterdir():
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (SR, 1, "PCM_16", 10 * SR)
        samples, _ = sf.read(path, dtype="float32")
        assert abs(np.abs(samples).max() - CLIP_PEAK) < 1e-3
