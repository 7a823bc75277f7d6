"""config/taxonomy.yaml: validated like the other files, and read by everything that triages."""

from __future__ import annotations

import collections
import json

import pytest
from pydantic import ValidationError

from crews.outputs import Draft, draft_model
from crews.settings import ConfigError, load_config

# The offline crew's results on data/tickets.csv: as before the taxonomy was configuration, but
# for one ticket that `late` and `lost` as whole words (commit 49dcb0f) no longer call shipping.
SAMPLE_STATUSES = {"approved": 37, "needs_human": 14}
SAMPLE_CATEGORIES = {"refund": 12, "shipping": 12, "damaged_item": 6, "billing": 4, "account": 4,
                     "complaint": 3, "return": 4, "general": 5, "cancellation": 1}
SAMPLE_PRIORITIES = {"normal": 37, "high": 8, "urgent": 2, "low": 4}


def edit(project, name, old, new):
    path = project / name
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_the_draft_schema_names_only_the_taxonomy(project):
    taxonomy = load_config(project).taxonomy
    model = draft_model(taxonomy)
    assert model.__name__ == "Draft" and model.taxonomy.model_dump() == taxonomy.model_dump()
    assert draft_model(taxonomy) is model  # one class per taxonomy: its schema is cached
    schema = model.model_json_schema()
    assert schema["properties"]["category"]["enum"] == list(taxonomy.categories)
    assert schema["properties"]["priority"]["enum"] == ["low", "normal", "high", "urgent"]
    good = {"category": "refund", "priority": "high", "language": "en", "reply": "Hi"}
    assert model.model_validate(good).category == "refund"
    with pytest.raises(ValidationError):
        model.model_validate({**good, "category": "gift_cards"})
    with pytest.raises(ValidationError):
        model.model_validate({**good, "priority": "p1"})
    # A draft read back from the ledger keeps whatever was recorded.
    assert Draft.model_validate({**good, "category": "gift_cards"}).category == "gift_cards"


def test_the_strict_response_format_carries_the_enums(project):
    """What CrewAI hands the openai SDK for `output_pydantic`: a strict json_schema."""
    from openai.lib._parsing._completions import type_to_response_format_param

    model = draft_model(load_config(project).taxonomy)
    fmt = type_to_response_format_param(model)
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Draft"
    schema = fmt["json_schema"]["schema"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == set(schema["properties"])
    assert "account" in schema["properties"]["category"]["enum"]


@pytest.mark.parametrize("file, old, new, problem", [
    ("config/policy.yaml", "queues: [shipping,", "queues: [shiping,",
     "config/policy.yaml: `queues` names `shiping`, which config/taxonomy.yaml does not define "
     "(did you mean `shipping`?)"),
    ("config/policy.yaml", "escalate_categories: [complaint]", "escalate_categories: [complaints]",
     "config/policy.yaml: `escalate_categories` names `complaints`, which config/taxonomy.yaml "
     "does not define (did you mean `complaint`?)"),
    ("config/taxonomy.yaml", "    queue: billing\n", "    queue: bills\n",
     "config/taxonomy.yaml: `categories.billing.queue` is `bills`, which is not one of the "
     "queues (did you mean `billing`?)"),
    ("config/taxonomy.yaml", "- cancellation: ['\\bcancel']", "- cancelation: ['\\bcancel']",
     "config/taxonomy.yaml: `offline.categories[4]` is `cancelation`, which is not one of the "
     "categories (did you mean `cancellation`?)"),
    ("config/taxonomy.yaml", "'payment (?:failed|error)'", "'payment (?:failed|error'",
     "config/taxonomy.yaml: `offline.categories[3].billing`: 'payment (?:failed|error' is not a "
     "valid regular expression"),
    ("config/taxonomy.yaml", "default_priority: normal", "default_priority: medium",
     "config/taxonomy.yaml: `offline.default_priority` is `medium`, which is not one of the "
     "priorities"),
    ("config/taxonomy.yaml", "queues:\n  shipping: delivery", "queus:\n  shipping: delivery",
     "config/taxonomy.yaml: unknown key `queus` (did you mean `queues`?)"),
    ("config/policy.yaml", "queues: [shipping, returns, billing, accounts, escalations, general]",
     "queues: [shipping, billing, accounts, escalations, general]",
     "config/taxonomy.yaml: category `damaged_item` goes to queue `returns`, which "
     "config/policy.yaml `queues` does not allow"),
])
def test_a_broken_taxonomy_is_a_configuration_problem_naming_file_and_key(project, file, old,
                                                                           new, problem):
    edit(project, file, old, new)
    with pytest.raises(ConfigError) as err:
        load_config(project)
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_a_missing_taxonomy_says_so(project):
    (project / "config/taxonomy.yaml").unlink()
    with pytest.raises(ConfigError) as err:
        load_config(project)
    assert "config/taxonomy.yaml: file is missing; restore it from the crewbatch repository" in \
        err.value.problems


def test_check_reports_the_taxonomy(cli):
    result = cli("check", "--offline")
    assert result.exit_code == 0, result.output
    assert "taxonomy: 9 categories, 4 priorities, 6 queues (config/taxonomy.yaml)" in result.output


def test_the_sample_crew_triages_as_before(project, cli, results):
    result = cli("run", "data/tickets.csv", "--offline")
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip().splitlines()[-1]
    rows = results(project / "runs" / run_id / "results.csv")
    assert dict(collections.Counter(r["status"] for r in rows)) == SAMPLE_STATUSES
    assert dict(collections.Counter(r["category"] for r in rows)) == SAMPLE_CATEGORIES
    assert dict(collections.Counter(r["priority"] for r in rows)) == SAMPLE_PRIORITIES
    # Every ticket is routed to its category's queue, also one that goes to a person.
    queues = {"shipping": "shipping", "refund": "returns", "complaint": "escalations"}
    for r in rows:
        if r["category"] in queues:
            assert f"tag_ticket(queue={queues[r['category']]})" in r["actions"], r


def test_a_users_own_taxonomy_drives_prompt_classifier_and_review_sheet(project, cli, tmp_path,
                                                                        tickets_file):
    """A category added to the file is offered to the writer, found by the offline model's
    cues, routed to its queue and offered in the review sheet's drop-down."""
    from openpyxl import load_workbook

    edit(project, "config/taxonomy.yaml", "  general:\n    description: anything else",
         "  gift_cards:\n    description: buying or redeeming a gift card\n    queue: billing\n"
         "  general:\n    description: anything else")
    edit(project, "config/taxonomy.yaml", "  categories:\n    - shipping:",
         "  categories:\n    - gift_cards: ['gift ?card', 'voucher balance']\n    - shipping:")
    config = load_config(project)
    assert "- gift_cards: buying or redeeming a gift card (queue: billing)" in \
        config.taxonomy.prompt()
    source = tickets_file(tmp_path / "t.csv", [
        {"ticket_id": "G-1", "customer": "ann@example.org", "subject": "Gift card",
         "body": "My gift card code shows a balance of zero. Can you check?"}])
    result = cli("run", str(source), "--offline")
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip().splitlines()[-1]
    from crews.ledger import Ledger

    with Ledger(project / "runs/ledger.db") as ledger:
        (outcome,) = ledger.outcomes(run_id)
        steps = ledger.outcome_trail(outcome.outcome_id)["steps"]
    assert outcome.category == "gift_cards"
    tags = [a["args"] for a in json.loads(outcome.actions_json) if a["kind"] == "tag_ticket"]
    assert tags == [{"queue": "billing"}]
    draft = next(s for s in steps if s.step == "draft")
    assert draft.output["category"] == "gift_cards"
    out = tmp_path / "review.xlsx"
    assert cli("export", run_id, "-o", str(out)).exit_code == 0
    wb = load_workbook(out)
    ws = wb["review"]
    assert wb["lists"].sheet_state == "hidden"
    header = [c.value for c in ws[1]]
    lists = {v.formula1: str(v.sqref) for v in ws.data_validations.dataValidation}
    categories = [c.value for c in wb["lists"]["A"]]
    assert categories == list(config.taxonomy.categories) and "gift_cards" in categories
    column = ws.cell(row=1, column=header.index("category") + 1).column_letter
    assert lists["lists!$A$1:$A$10"] == f"{column}2"
    assert [c.value for c in wb["lists"]["B"] if c.value] == ["low", "normal", "high", "urgent"]
