"""Extractive answers: which sentence of a document answers a question, and which words of that
sentence are the answer, found from the words alone (no model, no gold answer); with the text
helpers they rest on (sentences, named entities, a document's subject).

A question says what it asks with its relation words ("born", "study"); the answering sentence
names the question's entity and repeats the most of them (:func:`answering_sentence`); the answer
is the part of that sentence the question does not already say (:func:`answer_span`: "Where did
Ada Quell study?" + "Ada Quell studied at Tarvik College." -> "Tarvik College"). Dreaming uses
them to answer a dream's questions from the document; Knowledge Seeding to answer the questions
the teacher writes about each sentence (``KnowledgeSeedingConfig.sentence_answers``), and to
check such a question by a round trip (:func:`confirms_answer`: does a reader of the whole document
answer it with that sentence's answer?).
"""

from __future__ import annotations

import re

_CAPITALISED = re.compile(r"[A-Z][a-z]+(?:[ -][A-Z][a-z]+)*")
#: Words a question's relation is never carried by (question words, articles, auxiliaries, pronouns).
FUNCTION_WORDS = frozenset("""what where when who whom whose which why how is was are were be been being did does do
has have had the a an of in on at to for with by from and or as this that these those it its his her hers their they
he she him them name named called""".split())
#: Inflections that share no four-letter start with their noun.
_SAME_RELATION = {"born": "birth", "work": "employ", "works": "employ", "worked": "employ"}


def split_sentences(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"(?<=[.!?])\s+", text.strip()) if part.strip()]


def named_entities(document: str) -> list[str]:
    """Capitalised phrases of ``document`` in order of first appearance, without duplicates. A single
    capitalised word that opens a sentence ("She", "The") counts only when it also appears elsewhere
    in a sentence; multi-word phrases ("Ilsa Varkonen") always count."""
    found: list[str] = []
    for sentence in split_sentences(document):
        for match in _CAPITALISED.finditer(sentence):
            phrase = match.group()
            opens = match.start() == 0 and " " not in phrase
            if opens and not re.search(rf"(?<=[a-z,;] ){re.escape(phrase)}\b", document):
                continue
            if phrase not in found:
                found.append(phrase)
    return found


def names_entity(question: str, entities: list[str]) -> bool:
    """Whether ``question`` holds a word of one of ``entities`` (as :func:`named_entities` finds them),
    case-sensitive and whole: "Where was Ilsa born?" names "Ilsa Varkonen"."""
    words = set(re.findall(r"[A-Za-z]+", question))
    return any(part in words for entity in entities for part in re.split(r"[ -]", entity))


def repaired_names(question: str, entities: list[str], *, similarity: float = 0.5) -> str:
    """``question`` with the misspelt words of a multi-word name of its document put right.

    A window of the question's words as long as one of ``entities`` (:func:`named_entities`), with at
    least one of the entity's capitalised words spelt exactly, has each other differing word replaced
    by the entity's word in that place when it is capitalised and alike (rapidfuzz's normalised
    Levenshtein similarity >= ``similarity``): "Where did Poffers Pairoushill work?" with the entity
    "Pofaris Pairoushill" -> "Where did Pofaris Pairoushill work?". A dream of a 135M model misspells
    about one question in ten so ("Tililo Drapoboth" for "Tililo Drapobith"), and learns its answer
    under a name that no later question uses. Longer entities are tried first and a word is repaired
    at most once; an entity of one word never repairs anything."""
    from rapidfuzz.distance import Levenshtein

    words = list(re.finditer(r"[A-Za-z]+", question))
    replacements: dict[int, str] = {}
    for entity in sorted(entities, key=lambda e: -len(re.split(r"[ -]", e))):
        parts = re.split(r"[ -]", entity)
        if len(parts) < 2:
            continue
        for start in range(len(words) - len(parts) + 1):
            window = range(start, start + len(parts))
            if any(index in replacements for index in window):
                continue
            pairs = [(index, words[index].group(), part) for index, part in zip(window, parts)]
            anchored = any(word == part and part[0].isupper() for _, word, part in pairs)
            wrong = [(index, word, part) for index, word, part in pairs if word != part]
            if not anchored or not wrong or not all(
                    word[0].isupper() and part[0].isupper()
                    and Levenshtein.normalized_similarity(word, part) >= similarity for _, word, part in wrong):
                continue
            replacements.update({index: part for index, _, part in wrong})
    for index in sorted(replacements, reverse=True):
        match = words[index]
        question = question[:match.start()] + replacements[index] + question[match.end():]
    return question


def document_subject(document: str) -> str | None:
    """The named entity (:func:`named_entities`) that the most sentences of ``document`` name (the
    first on a tie): the person a biography is about, the topic of an article. None without one."""
    sentences = split_sentences(document)
    best, most = None, 0
    for entity in named_entities(document):
        count = sum(names_entity(sentence, [entity]) for sentence in sentences)
        if count > most:
            best, most = entity, count
    return best


def relation_words(question: str) -> list[str]:
    """The lower-case words of ``question`` that say what it asks: three letters or more, not a
    function word, not a capitalised word (a name)."""
    words = [word.lower() for word in re.findall(r"[A-Za-z]{3,}", question)
             if not word[0].isupper() and word.lower() not in FUNCTION_WORDS]
    return [_SAME_RELATION.get(word, word) for word in words]


def _repeats(word: str, said: set[str]) -> bool:
    """Whether lower-case ``word`` is among ``said``: the same word, or the same first four letters
    ("studied" repeats "study"), with "born" counted as "birth" and "work" as "employer"."""
    word = _SAME_RELATION.get(word, word)
    return word in said or (len(word) >= 4 and any(w[:4] == word[:4] for w in said if len(w) >= 4))


def _said(text: str) -> set[str]:
    return {_SAME_RELATION.get(word.lower(), word.lower()) for word in re.findall(r"[A-Za-z]{3,}", text)}


def shared_relations(question: str, text: str) -> int:
    """How many of the question's :func:`relation_words` ``text`` repeats (the same word, or the same
    first four letters: "studied" repeats "study"; "born" counts as "birth")."""
    said = _said(text)
    return sum(_repeats(word, said) for word in relation_words(question))


def restates_question(question: str, answer: str) -> bool:
    """Whether ``answer`` repeats one of the question's :func:`relation_words` (:func:`shared_relations`);
    True for a question without any. A small model's wrong answers mostly answer another question
    ("Where was Ada born?" -> "Ada's first pet is Bim"), which this rejects without knowing the gold
    answer."""
    return not relation_words(question) or shared_relations(question, answer) > 0


#: Words that ask for a date, and words that ask for a name (a place, a person, an organisation).
_DATE_WORDS = frozenset({"when", "date", "year", "birthday"})
_NAME_WORDS = frozenset({"where", "who", "whom", "city", "town", "place", "birthplace", "hometown", "country",
                         "company", "employer", "school", "university", "college"})


def answer_kind(question: str) -> str | None:
    """``"date"`` when ``question`` asks for one ("When was Ada born?", "What is Ada's date of
    birth?"), ``"name"`` when it asks where, who or which organisation ("Where was Ada born?",
    "Who does Ada work for?", "Which school did Ada attend?"), None otherwise or when it asks both."""
    words = {word.lower() for word in re.findall(r"[A-Za-z]+", question)}
    date, name = bool(words & _DATE_WORDS), bool(words & _NAME_WORDS)
    return None if date == name else "date" if date else "name"


def _fits(kind: str | None, span: str | None) -> bool:
    """Whether ``span`` can be an answer of ``kind``: a date holds a digit; a name holds a
    capitalised word and no digit."""
    if kind is None:
        return True
    if span is None or any(c.isdigit() for c in span) != (kind == "date"):
        return False
    return kind == "date" or any(word[:1].isupper() for word in span.split())


def candidate_sentences(question: str, document: str) -> list[str]:
    """The sentences of ``document`` that could answer ``question`` extractively, in order: those
    naming an entity the question names (:func:`names_entity`) whose :func:`answer_span` is of the
    question's :func:`answer_kind` (a date holds a digit, a name a capitalised word and no digit)."""
    kind = answer_kind(question)
    return [sentence for sentence in split_sentences(document)
            if names_entity(question, named_entities(sentence)) and _fits(kind, answer_span(question, sentence))]


def answering_sentence(question: str, document: str) -> str | None:
    """The sentence of ``document`` that answers ``question`` by its words: among the
    :func:`candidate_sentences`, the first that repeats the most of the question's
    :func:`relation_words` ("Where was Ada Quell born?" -> "Tarvik is where Ada Quell was born.",
    not "Ada Quell was born on 2 May 1950."). None when no candidate repeats one (then the model can
    read: :mod:`sleepcore.sleep.sentence_reader`)."""
    best, most = None, 0
    for sentence in candidate_sentences(question, document):
        shared = shared_relations(question, sentence)
        if shared > most:
            best, most = sentence, shared
    return best


def _bare(word: str) -> str:
    word = word.strip(".,;:!?\"()[]").lower()
    return word[:-2] if word.endswith(("'s", "\u2019s")) else word


def answer_span(question: str, sentence: str) -> str | None:
    """The words of ``sentence`` that answer ``question``: its longest run of words the question does
    not say (a word is said when the question has it, or its first four letters, possessives and
    "born"/"birth" alike, or names a part of a name the question names: "Ada" says "Ada Quell"),
    counted in words that are not :data:`FUNCTION_WORDS`; on a tie the run holding a name or a
    number, then the later one (English puts the new information last). The
    run is widened to whole capitalised names at both ends and function words are trimmed from
    both ends. None when every content word is said.

    "Where did Ada Quell study?", "Ada Quell studied at Tarvik College." -> "Tarvik College";
    "Who was born in Tarvik?", "Ada Quell was born in Tarvik." -> "Ada Quell"."""
    words = sentence.strip().rstrip(".!?").split()
    said = {_SAME_RELATION.get(_bare(word), _bare(word)) for word in question.split()} - {""}
    said |= {part.lower() for entity in named_entities(sentence) if names_entity(question, [entity])
             for part in re.split(r"[ -]", entity)}
    fresh = [not _repeats(_bare(word), said) for word in words]
    best, best_rank, start = None, (0, False), None
    for end in range(len(words) + 1):
        if end < len(words) and fresh[end]:
            start = end if start is None else start
            continue
        if start is not None:
            run = words[start:end]
            rank = (sum(_bare(word) not in FUNCTION_WORDS for word in run),
                    any(word[:1].isupper() or word[:1].isdigit() for word in run))
            if rank[0] and rank >= best_rank:
                best, best_rank = (start, end), rank
            start = None
    if best is None:
        return None
    start, end = best
    while start > 0 and words[start][:1].isupper() and words[start - 1][:1].isupper():
        start -= 1
    while end < len(words) and words[end - 1][:1].isupper() and words[end][:1].isupper():
        end += 1
    while start < end and _bare(words[start]) in FUNCTION_WORDS:
        start += 1
    while end > start and _bare(words[end - 1]) in FUNCTION_WORDS:
        end -= 1
    return " ".join(words[start:end]).strip(",;:") or None


def _key_words(span: str, question: str) -> tuple[list[str], bool]:
    """The words of ``span`` an answer must say to give it, and whether they are names or numbers:
    its capitalised or numeric words that the question does not say, else its last content word that
    the question does not say (English puts the head of a phrase last: "collecting old maps")."""
    asked = {_bare(word) for word in question.split()} - {""}
    fresh = [word for word in span.split() if _bare(word) and not _repeats(_bare(word), asked)]
    names = [_bare(word) for word in fresh if word[:1].isupper() or word[:1].isdigit()]
    if names:
        return names, True
    content = [_bare(word) for word in fresh if _bare(word) not in FUNCTION_WORDS]
    return content[-1:], False


def confirms_answer(answer: str, question: str, sentence: str) -> bool:
    """Whether ``answer`` (a reader's answer to ``question``, the reader holding the whole document)
    gives the answer that ``sentence`` gives (:func:`answer_span`): it says every name and number of
    that span the question does not (the same word, case aside), or, for a span without any, its
    last content word (or one with the same first four letters: "scarf" and "scarves"). False when
    the sentence answers nothing new. This is the round-trip check of written questions (Alberti et
    al., 2019): a question written about one sentence that a reader answers from another sentence
    asks something else ("What is Ada's job?" written about her hobby), and learning the first
    sentence's answer to it would teach the wrong fact.

    "What does Ada do?", "Ada Quell works as a glassblower.", answer "Ada is a glassblower." -> True;
    "Who is Ada's father?", "Ada Quell was born on 3 May 1990.", answer "Ada's father is Bo." -> False."""
    span = answer_span(question, sentence)
    if span is None:
        return False
    keys, exact = _key_words(span, question)
    said = {_bare(word) for word in answer.split()} - {""}
    return bool(keys) and all(key in said if exact else _repeats(key, said) for key in keys)
