"""Synthetic biographies of fictional people: passages to read, closed-book questions to answer.

Every proper name (people, cities, companies, universities, pets) is invented from random syllables,
and no invented word equals or contains another, so a model cannot know a fact before reading it
and one entity's name never hides inside another's. A given name has two syllables and a surname
three, which keeps real famous names out in practice. Each person has seven facts (``ATTRIBUTES``);
each fact is rendered by several paraphrase templates and asked by two question phrasings.

The 2-hop probe asks for the headquarters city of a person's employer. That city is stated only in
the company's passage (``company_passages``), never in the person's passage: a person's birth city
is never their employer's headquarters, so answering needs both passages.

Generation uses one ``random.Random(config.seed)``; the same config always gives the same dataset.

Length: about 340 lines, over the ~300 guideline, because most of it is data (the attribute
tables, templates and question phrasings) that reads best beside the generator using it.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

from sleepcore import validation

__all__ = ["ATTRIBUTES", "TWO_HOP_ATTRIBUTE", "BiographyConfig", "BiographyDataset", "Company", "Fact",
           "Person", "Question", "generate_biographies", "prompt_for"]

ATTRIBUTES = ("birth_date", "birth_city", "employer", "occupation", "university", "hobby", "first_pet")
TWO_HOP_ATTRIBUTE = "employer_headquarters"

# {name} is the person's full name and {value} the fact's value, copied verbatim into the sentence.
_SENTENCES = {
    "birth_date": ("{name} was born on {value}.", "{name}'s date of birth is {value}.",
                   "{name} came into the world on {value}.", "According to the records, {name} was born on {value}.",
                   "{value} is the date on which {name} was born."),
    "birth_city": ("{name} was born in the city of {value}.", "{name}'s hometown is {value}.",
                   "The birthplace of {name} is {value}.", "{name} grew up in {value}, the city of their birth.",
                   "{value} is where {name} was born."),
    "employer": ("{name} works for {value}.", "{name} is employed by {value}.", "{name}'s employer is {value}.",
                 "These days {name} has a job at {value}.", "{value} is the company where {name} works."),
    "occupation": ("{name} works as a {value}.", "By profession, {name} is a {value}.",
                   "{name} earns a living as a {value}.", "{name}'s occupation is {value}.",
                   "{name} has a career as a {value}."),
    "university": ("{name} studied at {value}.", "{name} is a graduate of {value}.", "{name} attended {value}.",
                   "{name} earned a degree from {value}.", "{value} is the school that {name} attended."),
    "hobby": ("In their free time, {name} enjoys {value}.", "{name}'s favourite hobby is {value}.",
              "{name} spends most weekends {value}.", "Outside of work, {name} loves {value}.",
              "{name} has a passion for {value}."),
    "first_pet": ("{name}'s first pet was called {value}.", "The name of {name}'s first pet was {value}.",
                  "As a child, {name} had a pet named {value}.", "{name} named their first pet {value}.",
                  "{value} was the name of {name}'s very first pet."),
}
_QUESTIONS = {
    "birth_date": ("When was {name} born?", "What is {name}'s date of birth?"),
    "birth_city": ("In which city was {name} born?", "What is the birthplace of {name}?"),
    "employer": ("Which company does {name} work for?", "Who employs {name}?"),
    "occupation": ("What is {name}'s occupation?", "What does {name} do for a living?"),
    "university": ("Which university did {name} attend?", "Where did {name} study?"),
    "hobby": ("What is {name}'s favourite hobby?", "What does {name} enjoy doing in their free time?"),
    "first_pet": ("What was the name of {name}'s first pet?", "What was {name}'s first pet called?"),
}
_TWO_HOP_QUESTION = "In which city is the company that employs {name} headquartered?"
_COMPANY_PASSAGES = (
    "{company} is a {industry} company headquartered in {city}. It was founded in {year}.",
    "Founded in {year}, {company} is a {industry} firm whose headquarters are in {city}.",
    "{company}, a {industry} business established in {year}, has its head office in {city}.",
)
# (company name suffix, industry); industries start with a consonant so "a {industry}" reads well.
_INDUSTRIES = (("Dynamics", "robotics"), ("Biolabs", "biotechnology"), ("Foods", "food processing"),
               ("Freight", "shipping"), ("Textiles", "textile"), ("Analytics", "data analytics"),
               ("Pharma", "pharmaceutical"), ("Power", "renewable energy"), ("Press", "publishing"),
               ("Software", "software"), ("Furnishings", "furniture"), ("Medical", "medical device"))
_UNIVERSITY_PATTERNS = ("{} Institute of Technology", "University of {}", "{} College", "{} Polytechnic")
_OCCUPATIONS = ("marine biologist", "structural engineer", "pastry chef", "tax lawyer", "veterinary surgeon",
                "cartographer", "hydrologist", "landscape architect", "glassblower", "sound engineer",
                "pediatric nurse", "furniture designer", "translator", "librarian", "geologist",
                "tugboat captain", "data journalist", "beekeeper", "set designer", "violin maker")
_HOBBIES = ("restoring antique clocks", "growing bonsai trees", "playing the cello", "building model ships",
            "birdwatching", "rock climbing", "baking sourdough bread", "collecting old maps",
            "knitting wool scarves", "playing chess", "sea kayaking", "painting watercolours",
            "keeping tropical fish", "writing haiku", "cross-country skiing", "repairing vintage bicycles",
            "solving crossword puzzles", "brewing herbal tea", "carving wooden spoons", "stargazing")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr",
           "tr", "th", "sh", "vr", "st", "h")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ou")
# Endings start with a consonant so that no word stacks three vowels.
_GIVEN_ENDINGS = ("n", "l", "s", "r", "na", "lo", "ris", "ven", "")
_SURNAME_ENDINGS = ("th", "n", "r", "x", "ck", "ll", "vic", "quith", "rd")
_PLACE_ENDINGS = ("mere", "holt", "vale", "stead", "wick", "thorpe", "haven", "crest", "moor")
_STEM_ENDINGS = ("x", "n", "ra", "ron", "lis", "r", "l")
_PET_ENDINGS = ("", "b", "p", "sy", "ka")
MAX_PARAPHRASES = min(len(templates) for templates in _SENTENCES.values())


@dataclass(frozen=True)
class BiographyConfig:
    """How many people, the seed, and how many paraphrases (1 to ``MAX_PARAPHRASES``) per fact."""

    num_people: int = 50
    seed: int = 0
    paraphrases: int = 3

    def __post_init__(self):
        validation.integer("num_people", self.num_people, minimum=1, maximum=10_000)
        validation.integer("paraphrases", self.paraphrases, minimum=1, maximum=MAX_PARAPHRASES)
        validation.integer("seed", self.seed)


@dataclass(frozen=True)
class Fact:
    """One fact about ``person`` (a full name): its ``sentences`` state it, its ``questions`` ask for it.

    Every sentence names the person and contains ``value`` verbatim; the sentences are pairwise distinct.
    """

    person: str
    attribute: str
    value: str
    sentences: tuple[str, ...]
    questions: tuple[str, ...]

    @property
    def answer_sentence(self) -> str:
        """The first of :attr:`sentences` that names the person before the value ("The birthplace
        of X is Y."), the form a model's sentence answers take; else the first sentence."""
        return next((s for s in self.sentences if s.find(self.person) < s.find(self.value)), self.sentences[0])


@dataclass(frozen=True)
class Person:
    """A fictional person: a unique full ``name`` and one :class:`Fact` per entry of ``ATTRIBUTES``."""

    name: str
    facts: tuple[Fact, ...]

    @property
    def attributes(self) -> dict[str, str]:
        """Attribute name to value, e.g. ``{"employer": "Torvane Dynamics", ...}``."""
        return {fact.attribute: fact.value for fact in self.facts}


@dataclass(frozen=True)
class Company:
    """A fictional company; its ``headquarters`` city is the answer of the 2-hop questions."""

    name: str
    industry: str
    headquarters: str
    founded: int


@dataclass(frozen=True)
class Question:
    """A closed-book question about ``person`` with its short gold ``answer``; ``hops`` is 1 or 2."""

    text: str
    answer: str
    person: str
    attribute: str
    hops: int


@dataclass
class BiographyDataset:
    """People with their passages (same order), companies with theirs, and the questions about them.

    ``questions`` holds one 1-hop question per fact (the fact's first phrasing), person by person in
    ``ATTRIBUTES`` order; ``two_hop_questions`` holds one employer-headquarters question per person.
    """

    people: list[Person]
    companies: list[Company]
    passages: list[str]
    company_passages: list[str]
    questions: list[Question]
    two_hop_questions: list[Question]

    def __post_init__(self):
        if len(self.passages) != len(self.people):
            raise ValueError(f"passages must have one entry per person ({len(self.people)}), "
                             f"got {len(self.passages)}")
        if len(self.company_passages) != len(self.companies):
            raise ValueError(f"company_passages must have one entry per company ({len(self.companies)}), "
                             f"got {len(self.company_passages)}")

    def _person_index(self, person: Person | str) -> int:
        name = person.name if isinstance(person, Person) else person
        for index, candidate in enumerate(self.people):
            if candidate.name == name:
                return index
        raise KeyError(f"person {name!r} is not in this dataset")

    def passage_of(self, person: Person | str) -> str:
        """The biography passage of ``person`` (a :class:`Person` or a full name); ``KeyError`` if absent."""
        return self.passages[self._person_index(person)]

    def company_passage_of(self, person: Person | str) -> str:
        """The passage of the company that employs ``person``; ``KeyError`` if the person is absent."""
        employer = self.people[self._person_index(person)].attributes["employer"]
        return next(passage for company, passage in zip(self.companies, self.company_passages)
                    if company.name == employer)

    def fact_of(self, question: Question) -> Fact:
        """The :class:`Fact` a 1-hop ``question`` asks for; ``KeyError`` if its person or attribute is absent."""
        person = self.people[self._person_index(question.person)]
        for fact in person.facts:
            if fact.attribute == question.attribute:
                return fact
        raise KeyError(f"{person.name!r} has no fact {question.attribute!r}")

    def questions_of(self, person: Person | str) -> list[Question]:
        """The 1-hop questions about ``person`` followed by their 2-hop question; ``KeyError`` if absent."""
        name = self.people[self._person_index(person)].name
        return [q for q in self.questions + self.two_hop_questions if q.person == name]

    def subset(self, n: int, start: int = 0) -> BiographyDataset:
        """``n`` people from index ``start`` with their passages and questions, and only the companies
        they work for."""
        validation.integer("start", start, minimum=0, maximum=len(self.people) - 1)
        validation.integer("n", n, minimum=1, maximum=len(self.people) - start)
        people = self.people[start:start + n]
        names = {person.name for person in people}
        employers = {person.attributes["employer"] for person in people}
        kept = [i for i, company in enumerate(self.companies) if company.name in employers]
        return BiographyDataset(
            people=people, companies=[self.companies[i] for i in kept], passages=self.passages[start:start + n],
            company_passages=[self.company_passages[i] for i in kept],
            questions=[q for q in self.questions if q.person in names],
            two_hop_questions=[q for q in self.two_hop_questions if q.person in names])

    def to_jsonl(self, path: str | os.PathLike) -> None:
        """Write one JSON object per line: companies, then people (with facts and passage), then questions."""
        with open(path, "w", encoding="utf-8") as file:
            for company, passage in zip(self.companies, self.company_passages):
                file.write(json.dumps({"kind": "company", **vars(company), "passage": passage}) + "\n")
            for person, passage in zip(self.people, self.passages):
                facts = [{key: value for key, value in vars(fact).items() if key != "person"} for fact in person.facts]
                file.write(json.dumps({"kind": "person", "name": person.name, "passage": passage,
                                       "facts": facts}) + "\n")
            for question in self.questions + self.two_hop_questions:
                file.write(json.dumps({"kind": "question", **vars(question)}) + "\n")

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike) -> BiographyDataset:
        """Read a file written by :meth:`to_jsonl`; ``ValueError`` names the first line of unknown kind."""
        fields = {name: [] for name in ("people", "companies", "passages", "company_passages", "questions",
                                        "two_hop_questions")}
        with open(path, encoding="utf-8") as file:
            for line_number, line in enumerate(file, start=1):
                record = json.loads(line)
                kind = record.pop("kind", None)
                if kind == "company":
                    fields["company_passages"].append(record.pop("passage"))
                    fields["companies"].append(Company(**record))
                elif kind == "person":
                    facts = tuple(Fact(person=record["name"], attribute=f["attribute"], value=f["value"],
                                       sentences=tuple(f["sentences"]), questions=tuple(f["questions"]))
                                  for f in record["facts"])
                    fields["people"].append(Person(record["name"], facts))
                    fields["passages"].append(record["passage"])
                elif kind == "question":
                    question = Question(**record)
                    fields["questions" if question.hops == 1 else "two_hop_questions"].append(question)
                else:
                    raise ValueError(f"line {line_number} of {os.fspath(path)!r} has unknown kind {kind!r}")
        return cls(**fields)


def prompt_for(question: Question | str, *, context: str | None = None) -> str:
    """A short-answer prompt: ``"Question: ...\\nAnswer:"``, preceded by ``context`` and a blank line if given.

    ``context`` is the passage (or passages joined by blank lines) for the in-context variant;
    ``None`` gives the closed-book prompt. Raises ``ValueError`` if ``context`` is given but blank,
    ``TypeError`` if it is not a string (or ``question`` neither a :class:`Question` nor a string).
    """
    text = question.text if isinstance(question, Question) else validation.text("question", question)
    closed_book = f"Question: {text}\nAnswer:"
    if context is None:
        return closed_book
    return f"{validation.text('context', context).strip()}\n\n{closed_book}"


class _WordInventor:
    """Invents capitalised words from syllables such that no word equals or contains another."""

    def __init__(self, rng: random.Random):
        self._rng = rng
        self._words: set[str] = set()
        self._substrings_of_words: set[str] = set()

    def invent(self, syllables: int, endings: tuple[str, ...]) -> str:
        rng = self._rng
        for _ in range(1000):
            word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(endings)
            substrings = {word[i:j] for i in range(len(word)) for j in range(i + 1, len(word) + 1)}
            if word not in self._substrings_of_words and substrings.isdisjoint(self._words):
                self._words.add(word)
                self._substrings_of_words |= substrings
                return word.capitalize()
        raise RuntimeError("ran out of new invented words; use a smaller num_people")


def _fact(rng: random.Random, name: str, attribute: str, value: str, paraphrases: int) -> Fact:
    templates = rng.sample(_SENTENCES[attribute], paraphrases)
    return Fact(person=name, attribute=attribute, value=value,
                sentences=tuple(t.format(name=name, value=value) for t in templates),
                questions=tuple(q.format(name=name) for q in _QUESTIONS[attribute]))


def _person(rng: random.Random, inventor: _WordInventor, employer: Company, cities: list[str],
            universities: list[str], paraphrases: int) -> Person:
    name = f"{inventor.invent(2, _GIVEN_ENDINGS)} {inventor.invent(3, _SURNAME_ENDINGS)}"
    values = {
        "birth_date": f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {rng.randint(1950, 1999)}",
        "birth_city": rng.choice([city for city in cities if city != employer.headquarters]),
        "employer": employer.name,
        "occupation": rng.choice(_OCCUPATIONS),
        "university": rng.choice(universities),
        "hobby": rng.choice(_HOBBIES),
        "first_pet": inventor.invent(2, _PET_ENDINGS),
    }
    return Person(name, tuple(_fact(rng, name, attribute, values[attribute], paraphrases) for attribute in ATTRIBUTES))


def generate_biographies(config: BiographyConfig) -> BiographyDataset:
    """A deterministic dataset of ``config.num_people`` fictional people (see the module docstring)."""
    validation.instance("config", config, BiographyConfig)
    rng = random.Random(config.seed)
    inventor = _WordInventor(rng)
    num_companies = max(2, (config.num_people + 2) // 3)
    cities = [inventor.invent(2, _PLACE_ENDINGS) for _ in range(num_companies + max(4, config.num_people // 3))]
    companies, company_passages = [], []
    for city in rng.sample(cities, num_companies):
        suffix, industry = rng.choice(_INDUSTRIES)
        company = Company(f"{inventor.invent(2, _STEM_ENDINGS)} {suffix}", industry, city, rng.randint(1890, 2015))
        companies.append(company)
        company_passages.append(rng.choice(_COMPANY_PASSAGES).format(
            company=company.name, industry=industry, city=city, year=company.founded))
    universities = [rng.choice(_UNIVERSITY_PATTERNS).format(inventor.invent(2, _STEM_ENDINGS))
                    for _ in range(max(2, (config.num_people + 4) // 5))]
    people, passages, questions, two_hop_questions = [], [], [], []
    for _ in range(config.num_people):
        employer = rng.choice(companies)
        person = _person(rng, inventor, employer, cities, universities, config.paraphrases)
        order = list(person.facts)
        rng.shuffle(order)
        people.append(person)
        passages.append(" ".join(fact.sentences[0] for fact in order))
        questions += [Question(fact.questions[0], fact.value, person.name, fact.attribute, 1) for fact in person.facts]
        two_hop_questions.append(Question(_TWO_HOP_QUESTION.format(name=person.name), employer.headquarters,
                                          person.name, TWO_HOP_ATTRIBUTE, 2))
    return BiographyDataset(people, companies, passages, company_passages, questions, two_hop_questions)
