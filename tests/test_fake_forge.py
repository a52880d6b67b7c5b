"""The fake forge holds itself to the official API descriptions: a wrong answer is caught, not trusted."""
from __future__ import annotations

from fakeforge.openapi import SPECS


def test_a_wrong_github_answer_is_caught():
    spec = SPECS["github"]
    schema = spec.response_schema("get", "/repos/{owner}/{repo}/issues/{issue_number}", 200)
    good = spec.skeleton(schema)
    assert spec.validate(schema, good) == []
    assert spec.validate(schema, {**good, "number": "7"})
    assert spec.validate(schema, {k: v for k, v in good.items() if k != "title"})


def test_a_wrong_gitea_answer_is_caught_but_go_nulls_are_allowed():
    spec = SPECS["gitea"]
    schema = spec.response_schema("post", "/repos/{owner}/{repo}/pulls", 201)
    assert spec.validate(schema, {"number": 1, "head": {"ref": "b"}, "pull_request": None}) == []
    assert spec.validate(schema, {"number": 1, "head": "b"})


def test_the_fake_forge_flags_calls_outside_the_description(github):
    import requests

    answer = requests.get(f"{github.api}/repos/alice/widgets/stargazers", headers={"Authorization": "token fake-forge-token"})
    assert answer.status_code == 404
    assert github.violations and "not an operation" in github.violations[0]
    github.violations.clear()


def test_the_fake_forge_needs_the_token(github):
    import requests

    github.create_repo("alice", "widgets")
    assert requests.get(f"{github.api}/repos/alice/widgets").status_code == 401
    github.violations.clear()
