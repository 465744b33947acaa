"""Standard MIDI Files from timed note events (what fluidsynth renders)."""
from __future__ import annotations

import struct
from typing import Sequence

import numpy as np

DRUM_CHANNEL = 9
TICKS_PER_SECOND = 960  # 480 ticks per quarter at the file's fixed 120 bpm
BEND_RATE_HZ = 50  # pitch-bend messages per second of a vibrato
BEND_RANGE_CENTS = 200  # the General MIDI default pitch-bend range (±2 semitones)


def _varlen(value: int) -> bytes:
    """MIDI variable-length quantity."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def channel_of(part: int) -> int:
    """MIDI channel of a pitched part (skipping the drum channel); -1 maps to drums."""
    if part < 0:
        return DRUM_CHANNEL
    channel = part % 15
    return channel + (channel >= DRUM_CHANNEL)


def vibrato_bends(cents: float, hz: float, duration_s: float, channel: int = 0
                  ) -> list[tuple[int, int, bytes]]:
    """Pitch-bend messages (tick, order, data) of a sine vibrato of ±``cents`` at ``hz``."""
    times = np.arange(0.0, duration_s, 1.0 / BEND_RATE_HZ)
    values = 8192 + np.round(8191 * cents / BEND_RANGE_CENTS * np.sin(2 * np.pi * hz * times))
    return [(int(round(t * TICKS_PER_SECOND)), 0, bytes([0xE0 | channel, int(v) & 0x7F, int(v) >> 7]))
            for t, v in zip(times, values.astype(int))]


def midi_bytes(events: np.ndarray, programs: Sequence[int], velocities: Sequence[int],
               pans: Sequence[int], duration_s: float, vibrato: tuple[float, float] = (0.0, 0.0)
               ) -> bytes:
    """A type-0 Standard MIDI File at 120 bpm (960 ticks per second).

    Args:
        events: (M, 4) onset_s, duration_s, key, part (-1 = drums), or (M, 5) with each
            note's own velocity (1..127) in the fifth column.
        programs, velocities, pans: one per pitched part (a fifth column of ``events``
            overrides ``velocities``).
        duration_s: the end-of-track time.
        vibrato: (cents, hz) of a pitch-bend vibrato on part 0; 0 cents: none.
    """
    messages: list[tuple[int, int, bytes]] = []  # (tick, order, data); note-offs sort first
    for part, program in enumerate(programs[:15]):
        channel = channel_of(part)
        messages += [(0, 0, bytes([0xC0 | channel, program])),
                     (0, 0, bytes([0xB0 | channel, 10, pans[part]])),
                     (0, 0, bytes([0xB0 | channel, 7, 100]))]
    if vibrato[0] > 0:
        messages += vibrato_bends(vibrato[0], vibrato[1], duration_s, channel_of(0))
    for row in events:
        onset, dur, key, part = row[:4]
        part = int(part)
        channel = channel_of(part)
        velocity = 90 if part < 0 else velocities[part % len(velocities)]
        if len(row) > 4:
            velocity = int(np.clip(round(row[4]), 1, 127))
        key = int(key)
        on = int(round(onset * TICKS_PER_SECOND))
        off = max(on + 1, int(round((onset + dur) * TICKS_PER_SECOND)))
        messages.append((on, 2, bytes([0x90 | channel, key, velocity])))
        messages.append((off, 1, bytes([0x80 | channel, key, 0])))
    messages.sort(key=lambda m: (m[0], m[1]))
    track = bytearray(b"\x00\xff\x51\x03" + (500000).to_bytes(3, "big"))  # 120 bpm
    tick = 0
    for when, _, data in messages:
        track += _varlen(when - tick) + data
        tick = when
    end = max(tick, int(round(duration_s * TICKS_PER_SECOND)))
    track += _varlen(end - tick) + b"\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_SECOND // 2)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


def fold_keys(events: np.ndarray) -> np.ndarray:
    """Move pitched keys by octaves into the playable 24..108 range (drums untouched)."""
    events = events.copy()
    pitched = events[:, 3] >= 0
    keys = events[pitched, 2]
    keys = np.where(keys < 24, keys + 12 * np.ceil((24 - keys) / 12), keys)
    events[pitched, 2] = np.where(keys > 108, keys - 12 * np.ceil((keys - 108) / 12), keys)
    return events

