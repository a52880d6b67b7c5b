"""Parse and format issue refs: `host/owner/repo#N`, `owner/repo#N`, and issue or pull request URLs; an owner may
be a group path (`host/group/sub/project#N`, `…/group/sub/project/-/issues/N`), and `!M` or `/-/merge_requests/M`
names a GitLab merge request."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from forge_bridge.models import InvalidRef, IssueRef, RepoRef, bridge_number

_SEG = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_NAMESPACE = rf"{_SEG}(?:/{_SEG})*?"   # an owner, or a group path (GitLab): the last segment is the repository
# Told apart from a group by its form: a name with a dot, a port, or localhost.
_HOST = r"(?:localhost|[A-Za-z0-9][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)+)(?::[0-9]{1,5})?|[A-Za-z0-9][A-Za-z0-9.-]*:[0-9]{1,5}"
# `!M` and `/-/merge_requests/M` name a GitLab merge request: its own number space (models.MERGE_REQUEST_BASE).
_NUMBER = r"(?:(?P<mark>[#!])(?P<number>[0-9]+))"
URL_RE = re.compile(
    rf"https?://(?P<host>{_HOST})/(?P<owner>{_NAMESPACE})/(?P<repo>{_SEG})/(?:-/)?"
    rf"(?:(?:issues|pulls|pull)/(?P<issue>[0-9]+)|merge_requests/(?P<merge_request>[0-9]+))"
)
FULL_RE = re.compile(rf"(?P<host>{_HOST})/(?P<owner>{_NAMESPACE})/(?P<repo>{_SEG}){_NUMBER}")
SHORT_RE = re.compile(rf"(?P<owner>{_NAMESPACE})/(?P<repo>{_SEG}){_NUMBER}")


def _number(match: re.Match) -> int:
    found = match.groupdict()
    if found.get("merge_request") or found.get("mark") == "!":
        return bridge_number(int(found.get("merge_request") or found["number"]), merge_request=True)
    return int(found.get("issue") or found["number"])


def _from_match(match: re.Match, default_host: str | None) -> IssueRef:
    host = match.groupdict().get("host") or default_host
    if not host:
        raise InvalidRef(f"{match.group(0)!r} names no host and no default forge is configured")
    return IssueRef(RepoRef(host.lower(), match["owner"], match["repo"]), _number(match))


def parse_issue_ref(text: str, *, default_host: str | None = None) -> IssueRef:
    """The whole of `text` as an issue ref; raises InvalidRef with the reason otherwise."""
    text = text.strip()
    for pattern in (URL_RE, FULL_RE, SHORT_RE):
        match = pattern.fullmatch(text)
        if match:
            return _from_match(match, default_host)
    raise InvalidRef(f"not an issue ref: {text!r} (expected host/owner/repo#N, owner/repo#N, group/project!M or an "
                     "issue or merge request URL)")


def parse_repo_ref(text: str) -> RepoRef:
    """`host/owner/name`, as RepoRef prints itself."""
    return parse_issue_ref(f"{text}#1").repo


def find_issue_ref(text: str, *, default_host: str | None = None) -> IssueRef | None:
    """The first issue ref inside a sentence, as kugetsu's `delegate` accepted them."""
    for pattern in (URL_RE, FULL_RE, SHORT_RE):
        match = pattern.search(text)
        if match:
            return _from_match(match, default_host)
    return None


def host_of_url(url: str) -> str:
    """`https://Git.Example.com:3000/x` -> `git.example.com:3000`."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise InvalidRef(f"not a URL with a host: {url!r}")
    return parts.hostname.lower() + (f":{parts.port}" if parts.port else "")
