"""Tags that say how a delivered track was made: its prompt, seed, model and length.

A downloaded file outlives the Discord message it came with, so it carries its own story. The
tags are written with mutagen: Vorbis comments in FLAC and Ogg (Vorbis, Opus), ID3v2.4 in MP3 and,
as mutagen puts it, in a WAV's `id3 ` chunk. Most WAV readers (Windows, libsndfile, audio editors)
look only at the RIFF `LIST/INFO` chunk, which mutagen doesn't write, so this module writes that
small chunk itself: title (INAM), comment (ICMT) and software (ISFT).

Only metadata changes, never the audio frames; and since tags are a courtesy while the audio is
the point, a file that can't be tagged (an unknown format, chunks that don't parse, tags that
would change what the header says) comes back unchanged.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from typing import Any

import mutagen
from mutagen.flac import FLAC
from mutagen.id3 import COMM, ID3, TIT2, TXXX
from mutagen.mp3 import MP3
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from bot.music.audio import AudioError, probe

log = logging.getLogger(__name__)

__all__ = ["SOFTWARE", "TrackTags", "read_tags", "tag_audio", "tag_room"]

SOFTWARE = "jambot"

# mutagen's file types by our extension; Ogg is told apart by its first packet.
_KINDS: dict[str, list[type[Any]]] = {
    "wav": [WAVE],
    "flac": [FLAC],
    "ogg": [OggVorbis, OggOpus],
    "mp3": [MP3],
}
_FIELDS = ("title", "comment", "seed", "model", "duration", "extended_from")
# What mutagen (and struct, for the INFO chunk) raise for data they can't parse.
_TAG_ERRORS: tuple[type[Exception], ...] = (mutagen.MutagenError, ValueError, struct.error)


@dataclass(frozen=True)
class TrackTags:
    """What made a track: written into the delivered file by `tag_audio`."""

    prompt: str
    seed: int | None
    model: str  # e.g. "stereo-melody-large"
    duration_seconds: float
    extended_from: str | None = None  # what the track continues (a job or prediction id)

    @property
    def comment(self) -> str:
        made = f"made with {SOFTWARE} / MusicGen ({self.model})"
        return f"{made}, extended from {self.extended_from}" if self.extended_from else made

    def fields(self) -> dict[str, str]:
        """The tags by the names `read_tags` uses; seed and extended_from only when known."""
        values = {
            "title": self.prompt,
            "comment": self.comment,
            "seed": None if self.seed is None else str(self.seed),
            "model": self.model,
            "duration": f"{self.duration_seconds:g}",
            "extended_from": self.extended_from,
        }
        return {name: value for name, value in values.items() if value is not None}


def tag_room(tags: TrackTags) -> int:
    """At most how many bytes `tag_audio` adds, so that a caller can leave that room under an
    upload limit: every text twice (a WAV holds both ID3 and INFO) plus a kilobyte for frame,
    chunk and page headers."""
    text = sum(len(value.encode()) for value in tags.fields().values())
    return 2 * text + 1024


def tag_audio(data: bytes, extension: str, tags: TrackTags) -> bytes:
    """`data` with `tags` written in (replacing any earlier ones), or `data` itself when it
    can't be tagged. `extension` is the format as `AudioInfo.format` names it."""
    kinds = _KINDS.get(extension)
    if kinds is None:
        return data
    try:
        tagged = _tagged(data, kinds, tags.fields())
        if extension == "wav":
            tagged = _with_riff_info(tagged, tags)
    except _TAG_ERRORS as exc:
        log.warning("couldn't tag %d bytes of %s: %s", len(data), extension, exc)
        return data
    if not _same_audio(data, tagged):  # pragma: no cover - would be a mutagen bug
        log.warning("tagging changed what %d bytes of %s hold; left untagged", len(data), extension)
        return data
    return tagged


def read_tags(data: bytes, extension: str) -> dict[str, str]:
    """The tags `tag_audio` writes, by name (title, comment, seed, ...); {} when there are none
    or the format is unknown. WAV tags come from the ID3 chunk."""
    kinds = _KINDS.get(extension)
    if kinds is None:
        return {}
    try:
        audio = mutagen.File(io.BytesIO(data), options=kinds)
    except _TAG_ERRORS:
        return {}
    if audio is None or audio.tags is None:
        return {}
    if isinstance(audio.tags, ID3):
        return _read_id3(audio.tags)
    return {name: audio.tags[name.upper()][0] for name in _FIELDS if name.upper() in audio.tags}


# --- mutagen -------------------------------------------------------------------------------


def _tagged(data: bytes, kinds: list[type[Any]], fields: dict[str, str]) -> bytes:
    buffer = io.BytesIO(data)
    audio = mutagen.File(buffer, options=kinds)
    if audio is None:
        raise ValueError("not a file of this format")
    if audio.tags is None:
        audio.add_tags()
    if isinstance(audio.tags, ID3):
        _write_id3(audio.tags, fields)
    else:
        for name in _FIELDS:
            if name.upper() in audio.tags:
                del audio.tags[name.upper()]
        for name, value in fields.items():
            audio.tags[name.upper()] = [value]
    buffer.seek(0)
    audio.save(buffer, padding=_no_padding)
    return buffer.getvalue()


def _no_padding(info: Any) -> int:
    """Room left for later edits in place: none, the file is made once and sent."""
    return 0


def _write_id3(id3: ID3, fields: dict[str, str]) -> None:
    id3.delall("TIT2")
    id3.delall("COMM")
    for name in _FIELDS[2:]:
        id3.delall(f"TXXX:{name}")
    id3.add(TIT2(encoding=3, text=[fields["title"]]))
    id3.add(COMM(encoding=3, lang="eng", desc="", text=[fields["comment"]]))
    for name, value in fields.items():
        if name not in ("title", "comment"):
            id3.add(TXXX(encoding=3, desc=name, text=[value]))


def _read_id3(id3: ID3) -> dict[str, str]:
    found = {f"TXXX:{name}": name for name in _FIELDS[2:]} | {"TIT2": "title"}
    tags = {name: str(id3[key].text[0]) for key, name in found.items() if key in id3}
    comments = [frame for frame in id3.getall("COMM") if frame.desc == ""]
    if comments:
        tags["comment"] = str(comments[0].text[0])
    return tags


def _same_audio(before: bytes, after: bytes) -> bool:
    try:
        return probe(before) == probe(after)
    except AudioError:
        return False


# --- RIFF INFO -----------------------------------------------------------------------------


def _with_riff_info(data: bytes, tags: TrackTags) -> bytes:
    """The WAV `data` with its `LIST/INFO` chunk (if any) replaced by one holding `tags`,
    appended after the other chunks. Raises ValueError when the chunks don't parse."""
    chunks = [chunk for chunk in _riff_chunks(data) if chunk[:4] + chunk[8:12] != b"LISTINFO"]
    info = {b"INAM": tags.prompt, b"ICMT": tags.comment, b"ISFT": SOFTWARE}
    body = b"INFO" + b"".join(_chunk(key, value.encode() + b"\0") for key, value in info.items())
    form = b"WAVE" + b"".join(chunks) + _chunk(b"LIST", body)
    return b"RIFF" + struct.pack("<I", len(form)) + form


def _riff_chunks(data: bytes) -> list[bytes]:
    """The top-level chunks of a RIFF WAVE, each with its header and pad byte."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF WAVE")
    chunks, offset = [], 12
    while offset < len(data):
        _, size = struct.unpack_from("<4sI", data, offset)
        end = offset + 8 + size
        if end > len(data):
            raise ValueError(f"a chunk at {offset} runs past the end")
        chunks.append(data[offset:end] + b"\0" * (size % 2))
        offset = end + size % 2
    return chunks


def _chunk(key: bytes, payload: bytes) -> bytes:
    return key + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) % 2)
