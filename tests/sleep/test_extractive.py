"""Extractive answers (no model): the relation words a question asks, whether an answer restates
them, the sentence of a document that answers a question, and the words of it that are the answer."""

from __future__ import annotations

from sleepcore.sleep.extractive import (answer_kind, answer_span, answering_sentence, confirms_answer, document_subject,
                                        relation_words, repaired_names, restates_question)


def test_an_answer_restates_its_question_when_it_repeats_what_the_question_asks():
    assert relation_words("Where was Ada Lovelace born?") == ["birth"]  # born counts as birth; names are not asked
    assert relation_words("What did Ada study at the University?") == ["study"]
    assert restates_question("Where was Ada born?", "Ada's birthplace is Lyon.")
    assert restates_question("What did Ada study?", "Ada studied physics.")  # the same first four letters
    assert not restates_question("Where was Ada born?", "The name of Ada's first pet is Bim.")  # another question's
    assert not restates_question("What was Ada's profession?", "Ada is a glassblower.")  # no word of it repeated
    assert restates_question("Who is Ada?", "A glassblower.")  # nothing to check


def test_the_answering_sentence_names_the_question_s_entity_and_repeats_the_most_of_what_it_asks():
    document = "Ada Quell likes tea. Bo Dunn studied law. Ada Quell studied maths at Tarvik and was born there."
    assert answering_sentence("What did Ada Quell study?", document) == document.split(". ")[2]  # not Bo's
    assert answering_sentence("Where was Ada born and where did she study?", document) == document.split(". ")[2]
    assert answering_sentence("What does Ada like?", document) == "Ada Quell likes tea."  # "like" repeats "likes"
    assert answering_sentence("What did Cy study?", document) is None  # no sentence names Cy
    assert answering_sentence("Who is Ada?", document) is None  # it asks nothing a sentence could repeat


def test_a_question_asking_when_or_where_gets_a_sentence_of_its_kind():
    # both sentences say "born": the date answers "when", the city "where" (measured: the 135M
    # model's dream questions "Where was X born?" all went to the birth date before this rule)
    document = "Ada Quell was born on 2 May 1950. Ada Quell plays chess. The birthplace of Ada Quell is Tarvik."
    date, city = "Ada Quell was born on 2 May 1950.", "The birthplace of Ada Quell is Tarvik."
    assert answer_kind("When was Ada Quell born?") == "date"
    assert answer_kind("What is Ada Quell's date of birth?") == "date"
    assert answer_kind("Where was Ada Quell born?") == "name"
    assert answer_kind("What is the birthplace of Ada Quell?") == "name"
    assert answer_kind("Who does Ada Quell work for?") == "name"
    assert answer_kind("Where and when was Ada born?") is None and answer_kind("What does Ada play?") is None
    assert answering_sentence("When was Ada Quell born?", document) == date
    assert answering_sentence("Where was Ada Quell born?", document) == city
    assert answering_sentence("In which city was Ada Quell born?", document) == city
    assert answering_sentence("What is the birthplace of Ada Quell?", document) == city
    assert answering_sentence("What does Ada Quell play?", document) == "Ada Quell plays chess."
    # "work" is the employer's relation; a job or a hobby is no name
    work = ("Ada Quell works as a glassblower. Outside of work, Ada Quell knits wool scarves. "
            "Ada Quell's employer is Vrobrux Freight.")
    for question in ("Who does Ada Quell work for?", "Where does Ada Quell work?", "Which company employs Ada Quell?"):
        assert answering_sentence(question, work) == "Ada Quell's employer is Vrobrux Freight.", question
    # a question of a kind no sentence holds gets none, not a sentence of the other kind
    assert answering_sentence("Where was Ada Quell born?", "Ada Quell was born on 2 May 1950.") is None


def test_the_answer_span_is_what_the_sentence_says_beyond_the_question():
    assert answer_span("Where did Ada Quell study?", "Ada Quell studied at Tarvik College.") == "Tarvik College"
    assert answer_span("When was Ada Quell born?", "Ada Quell was born on 3 May 1960.") == "3 May 1960"
    assert answer_span("What was the name of Ada's first pet?", "The name of Ada's first pet was Bim.") == "Bim"
    job = answer_span("What is Ada's job?", "Ada Quell earns a living as a glassblower.")
    assert job == "earns a living as a glassblower"
    # a reversed question is answered by the name it does not say
    assert answer_span("Who was born in Tarvik?", "Ada Quell was born in Tarvik.") == "Ada Quell"
    # a named answer is kept whole although the question says part of it ("college")
    assert answer_span("Which college did Ada attend?", "Ada attended Tarvik College.") == "Tarvik College"
    # equal runs: the one with a name or a number wins over the later one
    assert answer_span("Who is Bo Dunn?", "Tarvik is where Bo Dunn was born.") == "Tarvik"
    # nothing the question does not already say
    assert answer_span("Where was Ada born in Tarvik?", "Ada was born in Tarvik.") is None
    assert answer_span("Anything?", "") is None


def test_a_document_s_subject_is_the_entity_the_most_sentences_name():
    document = "Tarvik is a town. Ada Quell was born in Tarvik. Ada studied law. Bo Dunn met Ada Quell there."
    assert document_subject(document) == "Ada Quell"  # three sentences name Ada, two Tarvik, one Bo Dunn
    assert document_subject("Tarvik is a town. Bo Dunn lives in Tarvik.") == "Tarvik"  # a tie: the first
    assert document_subject("it rained. then it stopped.") is None


def test_a_reader_confirms_a_question_when_it_gives_the_sentence_s_answer():
    job, hobby = "Ada Quell works as a glassblower.", "Outside of work, Ada Quell spends most weekends collecting old maps."
    born = "Ada Quell was born on 3 May 1990."
    assert confirms_answer("Ada is a glassblower.", "What does Ada do?", job)  # the head word of a phrase
    assert confirms_answer("She collects old maps.", "What is Ada Quell's hobby?", hobby)  # four letters alike
    # asked about the hobby sentence, the reader answers the job: the question asks another fact
    assert not confirms_answer("Ada Quell is a glassblower.", "What is Ada Quell's occupation?", hobby)
    # names and numbers must all be said, exactly
    assert confirms_answer("Ada Quell was born on 3 May 1990.", "When was Ada Quell born?", born)
    assert not confirms_answer("Ada Quell was born on 3 May 1991.", "When was Ada Quell born?", born)
    assert not confirms_answer("Ada's father is Bo.", "Who is Ada's father?", born)
    assert not confirms_answer("Anything.", f"Is it true that {born[:-1]}?", born)  # nothing new to answer
    # a name said in part is not said ("Tarvik" could be another "Tarvik ..." of the same kind)
    assert not confirms_answer("Tarvik.", "Where did Ada Quell study?", "Ada Quell studied at Tarvik College.")


def test_misspelt_words_of_a_document_s_multi_word_names_are_put_right():
    entities = ["Pofaris Pairoushill", "Tililo Drapobith", "Nupax Foods", "Nugecrest"]
    assert repaired_names("Where did Poffers Pairoushill work?", entities) == "Where did Pofaris Pairoushill work?"
    assert repaired_names("What is Tililo Drapoboth's first pet?", entities) == "What is Tililo Drapobith's first pet?"
    assert repaired_names("Did Tililo Drapobith work at Nupax Fods?", entities) == \
        "Did Tililo Drapobith work at Nupax Foods?"
    for unchanged in ("Where was Marie Curie born?",  # no word of a name spelt right
                      "Who is Pintres Pairoushill?",  # not alike enough (similarity 0.43)
                      "What did Tililo Xyz do?", "Where is Nugecrst?",  # unlike; a one-word entity is never repaired
                      "Where did Pofaris Pairoushill work?", "Where did pofaris Pairoushill work?"):  # lower case
        assert repaired_names(unchanged, entities) == unchanged
    assert repaired_names("Who is Pintres Pairoushill?", entities, similarity=0.4) == "Who is Pofaris Pairoushill?"
