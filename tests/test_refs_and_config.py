"""Issue refs in every accepted form, and configuration errors that name the file and the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from forge_bridge.config import ConfigError, load_settings, parse_duration, settings_from_dict
from forge_bridge.models import MERGE_REQUEST_BASE, InvalidRef, IssueRef, RepoRef, shown_number
from forge_bridge.refs import find_issue_ref, parse_issue_ref


@pytest.mark.parametrize("text", [
    "git.example.com/shoko/kugetsu#14", "shoko/kugetsu#14", "https://git.example.com/shoko/kugetsu/issues/14",
    "https://git.example.com/shoko/kugetsu/pulls/14", "https://git.example.com/shoko/kugetsu/pull/14",
])
def test_every_ref_form_parses_to_the_canonical_ref(text):
    ref = parse_issue_ref(text, default_host="git.example.com")
    assert str(ref) == "git.example.com/shoko/kugetsu#14"


def test_a_port_is_kept_in_refs_and_becomes_underscore_in_directory_names():
    ref = parse_issue_ref("127.0.0.1:3000/o/r#1")
    assert str(ref) == "127.0.0.1:3000/o/r#1" and ref.dir_name == "127.0.0.1_3000-o-r-1"


def test_a_ref_inside_a_sentence_is_found():
    ref = find_issue_ref("please look at shoko/kugetsu#7 when you can", default_host="h.example")
    assert ref == IssueRef(RepoRef("h.example", "shoko", "kugetsu"), 7)


@pytest.mark.parametrize("text", ["../etc/passwd#1", "o/..#1", "o/r#0", "/abs/r#1", "o/r", "o/r#x", "o\x00/r#1"])
def test_bad_refs_are_refused(text):
    with pytest.raises(InvalidRef):
        parse_issue_ref(text, default_host="h.example")


@pytest.mark.parametrize("owner", ["..", ".hidden", "", "-rf", "a//b", "a/../b", "/a", "a/", "a/.hidden",
                                   "a%2F..", "/".join(["g"] * 21)])
def test_repo_refs_refuse_names_that_could_leave_data_dir(owner):
    with pytest.raises(InvalidRef):
        RepoRef("h.example", owner, "r")


@pytest.mark.parametrize("text, canonical", [
    ("gitlab.example.com/group/sub/project#3", "gitlab.example.com/group/sub/project#3"),
    ("group/sub/project#3", "gitlab.example.com/group/sub/project#3"),
    ("https://gitlab.example.com/group/sub/deeper/project/-/issues/9", "gitlab.example.com/group/sub/deeper/project#9"),
    ("gitlab.example.com:8443/a/b#1", "gitlab.example.com:8443/a/b#1"),
])
def test_group_paths_of_any_depth_are_refs_and_stay_one_folder(text, canonical):
    ref = parse_issue_ref(text, default_host="gitlab.example.com")
    assert str(ref) == canonical and IssueRef.from_str(str(ref)) == ref
    assert "/" not in ref.dir_name and ".." not in ref.dir_name and ref.dir_name.endswith(f"-{ref.number}")
    assert ref.repo.full_name == canonical.split("/", 1)[1].split("#")[0]


@pytest.mark.parametrize("text", [
    "group/sub/project!5", "gitlab.example.com/group/sub/project!5",
    "https://gitlab.example.com/group/sub/project/-/merge_requests/5",
])
def test_merge_requests_are_numbered_apart_from_issues(text):
    ref = parse_issue_ref(text, default_host="gitlab.example.com")
    assert str(ref) == "gitlab.example.com/group/sub/project!5" and ref.number == MERGE_REQUEST_BASE + 5
    assert IssueRef.from_str(str(ref)) == ref and ref != parse_issue_ref("group/sub/project#5",
                                                                         default_host="gitlab.example.com")
    assert shown_number(ref.number) == "!5" and shown_number(5) == "#5"


@pytest.mark.parametrize("text", ["g/p!0", f"g/p!{MERGE_REQUEST_BASE}", "g/p!12345678901",
                                  "https://h.example/g/p/-/merge_requests/0", "https://h.example/g/../p/-/issues/1"])
def test_bad_merge_request_refs_are_refused(text):
    with pytest.raises(InvalidRef):
        parse_issue_ref(text, default_host="h.example")
    with pytest.raises(InvalidRef):
        IssueRef.from_str(f"h.example/g/p!{MERGE_REQUEST_BASE + 1}")


def test_group_paths_never_share_a_folder_with_a_dashed_name():
    nested = RepoRef("h.example", "a/b", "c")
    dashed = RepoRef("h.example", "a-b", "c")
    assert nested.dir_name != dashed.dir_name and nested.dir_name == "h.example-a+b-c"


@pytest.mark.parametrize("pattern, name, matches", [
    ("group/*", "group/project", True), ("group/*", "group/sub/project", False),
    ("group/**", "group/sub/project", True), ("group/**", "group/project", True), ("group/**", "other/x", False),
    ("alice/*", "alice/widgets", True), ("alice/w?dgets", "alice/widgets", True), ("alice/*", "bob/widgets", False),
])
def test_repo_patterns_match_one_level_or_any_depth(pattern, name, matches):
    from forge_bridge.config import RepoConfig

    assert RepoConfig(forge="f", name=pattern).matches("f", name) is matches


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("5m", 300), ("1h", 3600), (45, 45), ("12", 12)])
def test_durations(text, seconds):
    assert parse_duration(text, where="x") == seconds


def test_unknown_keys_name_the_file_and_the_key(tmp_path: Path):
    config = tmp_path / "forge-bridge.toml"
    config.write_text('max_agents = 3\n')
    with pytest.raises(ConfigError, match=r"forge-bridge.toml: unknown key 'max_agents'"):
        load_settings(config, environ={})
    config.write_text('[[forges]]\nname = "g"\nkind = "github"\nurl = "https://github.com"\ntoken = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown key forges\[0\].'token'"):
        load_settings(config, environ={})


def test_environment_overrides_top_level_keys_and_secrets_come_from_named_variables(tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_text('workers = 2\n[[forges]]\nname = "g"\nkind = "github"\nurl = "https://ghe.example.com"\n'
                      'token_env = "MY_TOKEN"\n')
    settings = load_settings(config, environ={"FORGE_BRIDGE_WORKERS": "5", "MY_TOKEN": "t0ken"})
    forge = settings.forge("g")
    assert settings.workers == 5 and forge.token() == "t0ken" and forge.api_url == "https://ghe.example.com/api/v3"
    assert "t0ken" not in repr(settings)


def test_github_dot_com_api_url_and_gitea_api_url():
    settings = settings_from_dict({"forges": [
        {"name": "a", "kind": "github", "url": "https://github.com"},
        {"name": "b", "kind": "forgejo", "url": "https://codeberg.org/"}]}, source="t", environ={})
    assert settings.forge("a").api_url == "https://api.github.com"
    assert settings.forge("b").api_url == "https://codeberg.org/api/v1" and settings.forge("b").host == "codeberg.org"


def test_a_gitlab_forge_talks_to_api_v4_and_has_no_github_app():
    settings = settings_from_dict({"forges": [{"name": "gl", "kind": "gitlab", "url": "https://gitlab.example/"}]},
                                  source="t", environ={})
    assert settings.forge("gl").api_url == "https://gitlab.example/api/v4"
    with pytest.raises(ConfigError, match="GitHub Apps are a GitHub feature; a gitlab forge uses token_env"):
        settings_from_dict({"forges": [{"name": "gl", "kind": "gitlab", "url": "https://gitlab.example",
                                        "app_id": 1, "private_key_env": "K"}]}, source="t", environ={})


def test_allowlist_patterns_and_exclusions():
    settings = settings_from_dict({
        "forges": [{"name": "g", "kind": "gitea", "url": "https://g.example"}],
        "repos": [{"forge": "g", "name": "shoko/*"}, {"forge": "g", "name": "!shoko/secret"}]}, source="t", environ={})
    assert settings.repo_allowed("g", "shoko/kugetsu")
    assert not settings.repo_allowed("g", "shoko/secret")
    assert not settings.repo_allowed("g", "other/kugetsu")


GH = {"name": "gh", "kind": "github", "url": "https://github.com"}


@pytest.mark.parametrize(("raw", "message"), [
    ({"workers": -1}, "workers: must be a whole number from 0 to"),
    ({"event_workers": 0}, "event_workers: must be a whole number from 1 to"),
    ({"task_timeout": "soon"}, "task_timeout: expected a duration"),
    ({"agent": {"preset": "command"}}, "agent.argv is required"),
    ({"agent": {"preset": "command", "argv": "my-agent --go"}}, "never a shell string"),
    ({"agent": {"preset": "command", "argv": ["a"], "session_id": "stdout"}}, "session_id must be json:<key> | uuid"),
    ({"agent": {"summary": "json:"}}, "summary must be json:<key> | none"),
    ({"agent": {"preset": "command", "argv": ["a"], "success": "zero"}}, "success must be json:<key> | exit"),
    ({"agent": {"preset": "claude", "max_turns": 2.5}}, "max_turns must be a non-negative whole number"),
    ({"agent": {"preset": "claude", "max_budget_usd": -1}}, "max_budget_usd must be a non-negative number"),
    ({"agent": {"pass_env": "ANTHROPIC_API_KEY"}}, "pass_env must be a list"),
    ({"agent": {"extra_args": "--model opus"}}, "extra_args must be a list of strings"),
    ({"agent": {"home_per_issue": "yes"}}, "agent.home_per_issue must be true or false, got 'yes'"),
    ({"forges": [{"name": "g", "kind": "svn", "url": "https://x"}]}, "kind must be github, gitea, forgejo or gitlab"),
    ({"repos": [{"forge": "nope", "name": "a/b"}]}, "names no configured forge"),
    ({"public_url": "bridge.example.com"}, "public_url must look like https://"),
    ({"forges": [{**GH, "app_id": "abc", "private_key_env": "K"}]}, "app_id must be a positive whole number"),
    ({"forges": [{**GH, "app_id": 0, "private_key_env": "K"}]}, "app_id must be a positive whole number"),
    ({"forges": [{**GH, "app_id": 5}]}, "needs exactly one of private_key_env"),
    ({"forges": [{**GH, "app_id": 5, "private_key_env": "K", "private_key_file": "k.pem"}]}, "exactly one of"),
    ({"forges": [{**GH, "app_id": 5, "private_key_env": "K", "token_env": "T"}]}, "token_env and app_id"),
    ({"forges": [{**GH, "app_id": 5, "private_key_env": "K", "installation_id": -1}]}, "installation_id must be"),
    ({"forges": [{**GH, "kind": "gitea", "app_id": 5, "private_key_env": "K"}]}, "GitHub Apps are a GitHub feature"),
    ({"forges": [{**GH, "token_value": "x"}]}, "unknown key"),
    ({"budget": {"task_usd": -1}}, "budget.task_usd must be a number from 0"),
    ({"budget": {"issue_usd": "lots"}}, "budget.issue_usd must be a number"),
    ({"budget": {"repo_daily_usd": 1e308}}, "budget.repo_daily_usd must be a number from 0"),
    ({"budget": {"task_usd": float("nan")}}, "budget.task_usd must be a number from 0"),
    ({"budget": {"task_usd": float("inf")}}, "budget.task_usd must be a number from 0"),
    ({"budget": {"task_tokens": 2.5}}, "budget.task_tokens must be a whole number"),
    ({"budget": {"task_dollars": 1}}, "unknown key budget.'task_dollars'"),
    ({"budget": 5}, "budget must be a table"),
    ({"ci_feedback": -1}, "ci_feedback: must be a whole number from 0"),
    ({"ci_feedback": "lots"}, "ci_feedback: expected a whole number"),
    ({"agent": {"preset": "command", "argv": ["a"], "cost": "total"}}, "agent.cost must be json:<key> | none"),
])
def test_configuration_mistakes_are_explained(raw, message):
    with pytest.raises(ConfigError, match=message):
        settings_from_dict(raw, source="t.toml", environ={})


def test_allow_users_are_scoped_to_a_forge_when_several_are_configured():
    forges = [{"name": "github", "kind": "github", "url": "https://github.com"},
              {"name": "home", "kind": "gitea", "url": "https://git.example.com"}]
    with pytest.raises(ConfigError, match='allow_users: .alice. must name its forge'):
        settings_from_dict({"allow_users": ["alice"], "forges": forges}, source="t.toml", environ={})
    with pytest.raises(ConfigError, match="allow_bots: 'gitlab:ci' names no configured forge"):
        settings_from_dict({"allow_bots": ["gitlab:ci"], "forges": forges}, source="t.toml", environ={})
    settings = settings_from_dict({"allow_users": ["home:alice"], "forges": forges}, source="t.toml", environ={})
    assert settings.user_allowed("home", "Alice") and not settings.user_allowed("github", "alice")
    alone = settings_from_dict({"allow_users": ["alice"], "forges": forges[:1]}, source="t.toml", environ={})
    assert alone.user_allowed("github", "alice")   # one forge: the plain form means that forge


def test_a_github_app_key_is_read_from_its_file_next_to_the_configuration_and_redacted(tmp_path: Path):
    from forge_bridge.redact import redact, secret_values

    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretsecretline1\nAnotherLineOfTheKeyBody2\n" \
          "-----END RSA PRIVATE KEY-----\n"
    (tmp_path / "app.pem").write_text(pem)
    config = tmp_path / "forge-bridge.toml"
    config.write_text('[[forges]]\nname = "gh"\nkind = "github"\nurl = "https://github.com"\napp_id = 42\n'
                      'private_key_file = "app.pem"\ninstallation_id = 7\n')
    forge = load_settings(config, environ={}).forges[0]
    assert (forge.is_app, forge.app_id, forge.installation_id) == (True, 42, 7)
    assert forge.private_key() == pem and forge.private_key_file == str(tmp_path / "app.pem")
    assert redact("oops: AnotherLineOfTheKeyBody2", secret_values(load_settings(config, environ={}), {})) == \
        "oops: [redacted]"
    (tmp_path / "app.pem").unlink()
    with pytest.raises(ConfigError, match="cannot read private_key_file"):
        forge.private_key()
