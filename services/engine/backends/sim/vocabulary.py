"""The simulator's vocabulary and its word-level tokenizer.

A token is a word with its leading whitespace (" river"), one punctuation mark (".") or a newline,
like the pieces a BPE tokenizer makes for common English. Token ids are indices into `TOKEN_TEXTS`.
Prompt text is split into such pieces; a word outside the vocabulary maps onto a vocabulary id by a
stable hash, so every text has a token count and ids, and joining a prompt's pieces gives the prompt
back exactly (echo with logprobs relies on that).
"""

from __future__ import annotations

import itertools
import re
import zlib
from dataclasses import dataclass

EOS_TOKEN_ID = 0

# Specials and punctuation first, then words roughly by frequency (the simulator samples earlier
# words more often, as text does).
_SPECIAL_TEXTS = ("", "\n", " ")
_PUNCTUATION = (".", ",", "?", "!", ":", ";", "'", '"', "(", ")", "-", "{", "}", "[", "]", "/", "<", ">", "|")
_WORDS = """
the of and to a in is that it for was on with as be at by this from have not are or but his
they one had you which an we there were all she their has been would her more when will if no
out so said what up its about into than them can only other new some could time these two may
then do first any my now such like our over man me even most made after also did many before
must through back years where much your way well down should because each just those people how
too little state good very make world still own see men work long get here between both life
being under never day same another know while last might us great old year off come since against
go came right used take three states himself few house use during without again place around
however home small found thought went say part once general high upon school every does got left
number course war until always away something fact though water less public put think almost hand
enough far took head yet government system better set told nothing night end why called didn find
look asked later knew point next city going give group toward young days let room president side
social given present several order national possible rather second face per among form important
often things looked early white case john become large big need four within felt along children
saw best church ever least power development light thing seemed family interest want members mind
country area others done turned although open problem god service certain kind began different door
thus help means sense whole matter perhaps itself york times law human line above name example
action company hands local show whether five history gave today either act feet across taken past
quite anything seen having death week experience body word half really field am car words already
themselves information tell together college shall money period held keep sure free real probably
seems political behind cannot miss question air office making brought whose special major heard
problems ago became federal study available known result street economic boy position reason change
south board individual job areas society west close turn love community true court force full
seem am ago river mountain garden letter morning evening summer winter story music voice paper
window table bread stone forest silver golden quiet gentle bright distant ancient simple clear
careful sudden narrow quietly slowly softly together beneath beyond within toward across
""".split()


def _unique(words: list[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for word in words:
        seen.setdefault(word, None)
    return tuple(seen)


WORDS = _unique(_WORDS)
# EOS has no text: it ends a choice and shows nowhere in the output.
TOKEN_TEXTS: tuple[str, ...] = (*_SPECIAL_TEXTS, *_PUNCTUATION, *(" " + word for word in WORDS))
TOKEN_BYTES: tuple[bytes, ...] = tuple(text.encode() for text in TOKEN_TEXTS)
VOCAB_SIZE = len(TOKEN_TEXTS)
FIRST_WORD_ID = len(_SPECIAL_TEXTS) + len(_PUNCTUATION)
NEWLINE_TOKEN_ID = 1
SPACE_TOKEN_ID = 2

_ID_BY_KEY: dict[str, int] = {text.strip(): token for token, text in enumerate(TOKEN_TEXTS) if text.strip()}
# A piece is a word or one other character, with the whitespace before it; trailing whitespace is a
# piece of its own. Together the pieces cover the text exactly.
_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")


def token_id_of(piece: str) -> int:
    """The id of one piece: its vocabulary entry, or a stable stand-in for words outside it."""
    key = piece.strip()
    if not key:
        return NEWLINE_TOKEN_ID if "\n" in piece else SPACE_TOKEN_ID
    token = _ID_BY_KEY.get(key)
    if token is None:
        token = _ID_BY_KEY.get(key.lower())
    if token is None:
        token = FIRST_WORD_ID + zlib.crc32(key.encode()) % len(WORDS)
    return token


@dataclass(frozen=True, slots=True)
class Tokenized:
    """A text as tokens: the ids and the exact pieces of text they came from."""

    token_ids: tuple[int, ...]
    pieces: tuple[str, ...]


def tokenize(text: str, limit: int | None = None) -> Tokenized:
    """The text's tokens; with `limit`, only its first `limit` tokens, so that the work is bounded by
    the limit rather than by the text (a prompt of megabytes would otherwise hold the event loop)."""
    if limit is None:
        pieces = tuple(_PIECE.findall(text))
    else:
        pieces = tuple(match.group() for match in itertools.islice(_PIECE.finditer(text), limit))
    return Tokenized(tuple(token_id_of(piece) for piece in pieces), pieces)


def detokenize(token_ids: tuple[int, ...] | list[int]) -> Tokenized:
    """A pre-tokenized prompt back as text pieces; ids must be below VOCAB_SIZE."""
    ids = tuple(token_ids)
    return Tokenized(ids, tuple(TOKEN_TEXTS[token] for token in ids))
