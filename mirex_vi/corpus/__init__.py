"""A synthetic version-identification corpus rendered from music21's public-domain scores.

Every selected score is one clique; its versions are renderings that differ the way covers
do: instrumentation (General MIDI programs, with or without accompaniment and drums), tempo
(0.75x to 1.33x, with a drift), key (-6..+6 semitones), soundfont, reverb, sample rate and
channels, loudness, filtering, added noise, structure (a repeated first half, loops) and
the excerpt's start and length. Generator version 2 adds, each with its probability: a
melody sung by a voice program with vibrato, rock/pop/swing band arrangements, changes of
form (a dropped or repeated section, an added intro or outro) and a low-bitrate MP3/AAC
pass; and it draws from every General MIDI soundfont Debian packages but one, which is held
out with one music21 collection for the out-of-distribution set (``--ood``). Scores are
parsed with music21, arranged here, written as Standard MIDI Files and rendered with the
``fluidsynth`` command-line program.

The modules follow the data: ``catalogue`` (which works, their ids and order) ->
``scores`` (music21 to a note array) -> ``versions`` (the random choices of a rendering;
``soundfonts`` the pools) -> ``arrangement`` (timed notes) -> ``midi`` -> ``render``
(fluidsynth, the audio chain, ``codec``, FLAC) -> ``driver`` (parallel rendering, splits,
metadata; ``mirex-vi corpus`` calls it) -> ``rerender`` (the audio of a corpus kept as
features, from its metadata).

The output follows the Discogs-VI-YT layout (docs/REFERENCE.md §6)::

    OUT/audio/<yid[:2]>/<yid>.flac
    OUT/<name>-light.json (+ .train .val .test, split by clique)
    OUT/<name>.jsonl

With ``--demo`` the works come from a reserved pool that training corpora never use, and the
MIREX-style lists ``collection.txt``, ``queries.txt`` and ``labels.tsv`` are written too.
Everything is a function of ``--seed`` (and the other options): the same command gives the
same ids, the same metadata and the same audio. Rerunning it with more ``--works`` into the
same folder grows the corpus: the first works, their ids and audio stay as they were, every
existing clique keeps its split, and only the new cliques are cut into train/val/test. Each
version record carries the ``generator_version`` that rendered it, and a folder made by
another version is refused before anything is rendered. ``--rerender METADATA`` renders
again the versions a metadata file lists (a corpus kept as features only), after checking
each version's drawn choices against its record.

Pseudo-covers of real recordings (``mirex-vi corpus-real``, ``tools/real-pool.sh``) follow
their own line: ``real_audio`` (reading pool files: audio, tracker modules, archive members,
raw PCM) -> ``pool`` (each file's package, licence, duration and sha256; recordings, a Frets
on Fire song's stems being one; splits by recording; segments) -> ``real_cliques`` (one
recording -> its cliques' pooled CQTs: the segment, ``audio_fx`` versions, renders of the
notes ``transcribe`` hears in it, a song's mix without its guitar) -> ``real`` (workers, resumable
parts, the u8 pooled store with its light JSON, the pool manifest). ``planetblupi`` music is
refused: it is reserved for independent evaluation.

Requires: fluidsynth, ffmpeg and the soundfonts of ``soundfonts.PACKAGES`` (Debian
packages; ``tools/setup.sh`` installs all but the held-out one) and
``pip install mirex-vi[corpus]`` (music21); for real recordings also rubberband-cli and
basic-pitch's model (``transcribe.INSTALL_HINT``).
"""
