"""A review read whole — pure: whether it asks the agent for work, and the one message it becomes, with every inline
comment's file, line and the end of the diff hunk it sits on, bounded so a long review stays a readable prompt."""
from __future__ import annotations

import re

from forge_bridge.forges.base import ReviewCommentInfo, ReviewInfo
from forge_bridge.intake.commands import mentions

HUNK_LINES = 6          # the end of a comment's diff hunk: the lines it is about, and a little before
MAX_COMMENTS = 50       # past this, the rest are counted, not quoted
MAX_BODY = 4000         # characters of the review's body or of one comment
VERDICTS = {"changes_requested": "requests changes", "approved": "approves", "commented": "comments"}


def asks_for_work(review: ReviewInfo, comments: list[ReviewCommentInfo], bot_login: str) -> bool:
    """Changes requested, or the bot named in the body or in any inline comment."""
    if review.state == "changes_requested":
        return True
    return any(mentions(text, bot_login) for text in (review.body, *(c.body for c in comments)) if text)


def review_message(review: ReviewInfo, comments: list[ReviewCommentInfo]) -> str:
    """The review as one message for the agent: who, the verdict, the body, then each inline comment in order."""
    verdict = VERDICTS.get(review.state, review.state or "reviews")
    parts = [f"A review of the pull request by @{review.author} {verdict}."]
    if review.body.strip():
        parts.append(_cut(review.body.strip()))
    if comments:
        parts.append(f"{len(comments)} inline comment{'s' if len(comments) != 1 else ''} on the code:")
        parts += [_inline(n, comment) for n, comment in enumerate(comments[:MAX_COMMENTS], 1)]
    if len(comments) > MAX_COMMENTS:
        parts.append(f"({len(comments) - MAX_COMMENTS} more inline comments left out: see the review on the forge.)")
    return "\n\n".join(parts)


def _inline(n: int, comment: ReviewCommentInfo) -> str:
    where = f"`{comment.path}`" + (f" {_lines(comment)}" if comment.line else " (on lines that have since changed)")
    hunk = _hunk_end(comment.diff_hunk)
    quoted = f"\n{_fenced(hunk, 'diff')}" if hunk else ""
    return f"{n}. {where}:{quoted}\n{_cut(comment.body.strip())}"


def _lines(comment: ReviewCommentInfo) -> str:
    if comment.start_line and comment.start_line != comment.line:
        return f"lines {comment.start_line}–{comment.line}"
    return f"line {comment.line}"


def _hunk_end(hunk: str) -> str:
    """The hunk's last lines (the comment sits on the last one), with its @@ header when it is cut."""
    lines = hunk.rstrip("\n").splitlines()
    if len(lines) <= HUNK_LINES + 1:
        return "\n".join(lines)
    header = lines[0] if lines[0].startswith("@@") else ""
    return "\n".join(([header, "…"] if header else ["…"]) + lines[-HUNK_LINES:])


def _fenced(text: str, info: str) -> str:
    """A code fence longer than any run of backticks inside, so the quoted code cannot end it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_BODY else text[:MAX_BODY] + " … (cut)"
