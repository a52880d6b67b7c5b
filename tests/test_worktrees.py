"""Mirrors, worktrees, branches and pushes with real git; no path a forge sends can leave data_dir."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from forge_bridge.workspace import worktrees
from forge_bridge.models import IssueRef, RepoRef
from helpers import wait_for


def _origin(tmp_path: Path) -> Path:
    seed = tmp_path / "seed"
    subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
    (seed / "f").write_text("1")
    subprocess.run(["git", "-C", str(seed), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(seed), "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "i"],
                   check=True)
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(seed), str(bare)], check=True)
    return bare


def test_worktree_branch_commit_and_push(tmp_path):
    origin = _origin(tmp_path)
    data = tmp_path / "data"
    issue = IssueRef(RepoRef("h.example", "o", "r"), 3)
    mirror, tree = worktrees.mirror_dir(data, issue.repo), worktrees.worktree_dir(data, issue)
    checkout = worktrees.Checkout(mirror, tree)
    env = worktrees.git_env(str(origin), "")
    worktrees.sync_mirror(mirror, str(origin), env)
    worktrees.ensure_worktree(checkout, branch="kugetsu/3-x", base="main")
    before = worktrees.head(checkout)
    (tree / "g").write_text("2")
    subprocess.run(["git", "-C", str(tree), "add", "g"], check=True)
    subprocess.run(["git", "-C", str(tree), "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "c"],
                   check=True)
    assert [line.split(" ", 1)[1] for line in worktrees.commit_subjects(checkout, before, worktrees.head(checkout))] \
        == ["c"]
    (tree / "left").write_text("uncommitted")
    (tree / ".gitignore").write_text("ignored\n")
    (tree / "ignored").write_text("never committed")
    (tree / ".aider.tags.cache.v4").mkdir()
    (tree / ".aider.tags.cache.v4" / "cache.db").write_text("aider's, not the project's")
    assert worktrees.commit_leftovers(checkout, "leftovers", author="bot")
    assert not worktrees.commit_leftovers(checkout, "nothing", author="bot")
    assert len(worktrees.commit_subjects(checkout, before, worktrees.head(checkout))) == 2
    committed = subprocess.run(["git", "-C", str(tree), "show", "--name-only", "--format=%an", "HEAD"],
                               capture_output=True, text=True).stdout.split()
    assert committed == ["bot", ".gitignore", "left"]
    worktrees.push(checkout, "kugetsu/3-x", str(origin), env)
    pushed = subprocess.run(["git", "-C", str(origin), "rev-parse", "kugetsu/3-x"], capture_output=True, text=True)
    assert pushed.stdout.strip() == worktrees.head(checkout)
    # A second task reuses the same worktree.
    worktrees.sync_mirror(mirror, str(origin), env)
    worktrees.ensure_worktree(checkout, branch="kugetsu/3-x", base="main")
    assert (tree / "g").exists()


def test_https_token_goes_in_a_header_never_the_url_or_a_file():
    env = worktrees.git_env("https://git.example.com/o/r.git", "s3cret")
    header = [env[f"GIT_CONFIG_VALUE_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))
              if env[f"GIT_CONFIG_KEY_{i}"] == "http.extraHeader"]
    assert len(header) == 1 and "s3cret" not in header[0] and "s3cret" not in str(env)
    assert "http.extraHeader" not in worktrees.git_env("/local/path.git", "s3cret").values()


@pytest.mark.parametrize(("title", "slug"), [("Fix the emoji names!", "fix-the-emoji-names"), ("", "issue"),
                                             ("../../etc; rm -rf", "etc-rm-rf")])
def test_branch_slugs(title, slug):
    assert worktrees.branch_name("kugetsu", 5, title) == f"kugetsu/5-{slug}"


def test_paths_stay_inside_data_dir(tmp_path):
    ref = IssueRef(RepoRef("h.example", "o", "r"), 1)
    assert tmp_path.resolve() in worktrees.worktree_dir(tmp_path, ref).parents
    (tmp_path / "worktrees").mkdir()
    (tmp_path / "worktrees" / ref.dir_name).symlink_to("/etc")
    with pytest.raises(ValueError):
        worktrees.worktree_dir(tmp_path, ref)


def test_a_stale_worktree_catches_up_with_the_pushed_branch(tmp_path):
    origin = _origin(tmp_path)
    issue = IssueRef(RepoRef("h.example", "o", "r"), 4)
    hosts = []
    for name in ("a", "b"):
        data = tmp_path / name
        checkout = worktrees.Checkout(worktrees.mirror_dir(data, issue.repo), worktrees.worktree_dir(data, issue))
        worktrees.sync_mirror(checkout.mirror, str(origin), worktrees.git_env(str(origin), ""))
        worktrees.ensure_worktree(checkout, branch="kugetsu/4-x", base="main")
        hosts.append(checkout)
    a, b = hosts
    tree_a, tree_b = a.worktree, b.worktree
    (tree_a / "a.txt").write_text("from a")
    subprocess.run(["git", "-C", str(tree_a), "add", "a.txt"], check=True)
    subprocess.run(["git", "-C", str(tree_a), "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "a"],
                   check=True)
    worktrees.push(a, "kugetsu/4-x", str(origin), worktrees.git_env())
    worktrees.sync_mirror(b.mirror, str(origin), worktrees.git_env(str(origin), ""))
    worktrees.catch_up(b, "kugetsu/4-x")
    assert (tree_b / "a.txt").read_text() == "from a"


def _commit_to(origin: Path, tmp_path: Path, branch: str, name: str, text: str) -> str:
    """A commit made on the forge's side (by someone else), on `branch`."""
    work = tmp_path / f"clone-{name}"
    subprocess.run(["git", "clone", "-q", "-b", "main", str(origin), str(work)], check=True)
    subprocess.run(["git", "-C", str(work), "checkout", "-q", "-B", branch], check=True)
    (work / name).write_text(text)
    subprocess.run(["git", "-C", str(work), "add", name], check=True)
    subprocess.run(["git", "-C", str(work), "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", name],
                   check=True)
    subprocess.run(["git", "-C", str(work), "push", "-q", "origin", branch], check=True)
    return subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def _issue_worktree(tmp_path: Path, number: int, branch: str):
    """An issue's worktree on `branch`, from a fresh mirror of a new origin: (origin, checkout, env)."""
    origin, data = _origin(tmp_path), tmp_path / "data"
    issue = IssueRef(RepoRef("h.example", "o", "r"), number)
    checkout = worktrees.Checkout(worktrees.mirror_dir(data, issue.repo), worktrees.worktree_dir(data, issue))
    env = worktrees.git_env(str(origin), "")
    worktrees.sync_mirror(checkout.mirror, str(origin), env)
    worktrees.ensure_worktree(checkout, branch=branch, base="main")
    return origin, checkout, env


def _status(checkout: worktrees.Checkout) -> str:
    return worktrees.git("status", "--porcelain", checkout=checkout)


def test_a_new_issue_takes_the_spare_worktree_checked_out_ahead(tmp_path):
    origin, data = _origin(tmp_path), tmp_path / "data"
    repo = RepoRef("h.example", "o", "r")
    mirror, env = worktrees.mirror_dir(data, repo), worktrees.git_env(str(origin), "")
    first = worktrees.Checkout(mirror, worktrees.worktree_dir(data, IssueRef(repo, 1)))
    worktrees.sync_mirror(mirror, str(origin), env)
    assert not worktrees.prepare_spare(mirror)          # no task yet: nothing says which branch to check out
    worktrees.ensure_worktree(first, branch="kugetsu/1-a", base="main")
    spare = worktrees.spare_dir(mirror)
    assert worktrees.prepare_spare(mirror) and (spare / "f").read_text() == "1"
    assert not worktrees.prepare_spare(mirror)          # one is enough
    # The base moves on after the spare was made; a new issue's worktree still starts from the latest base.
    latest = _commit_to(origin, tmp_path, "main", "newer", "2")
    worktrees.sync_mirror(mirror, str(origin), env)
    second = worktrees.Checkout(mirror, worktrees.worktree_dir(data, IssueRef(repo, 2)))
    worktrees.ensure_worktree(second, branch="kugetsu/2-b", base="main")
    assert not spare.exists()
    assert second.gitdir.is_dir() and (second.worktree / ".git").read_text() == f"gitdir: {second.gitdir}\n"
    assert worktrees.head(second) == latest and (second.worktree / "newer").read_text() == "2"
    assert worktrees.git("rev-parse", "--abbrev-ref", "HEAD", checkout=second) == "kugetsu/2-b"
    assert _status(second) == ""
    (second.worktree / "g").write_text("work")
    assert worktrees.commit_leftovers(second, "work", author="bot")
    worktrees.push(second, "kugetsu/2-b", str(origin), env)
    assert worktrees.head(first) != worktrees.head(second)   # the first issue's worktree is its own
    # Each issue's repository is its own, borrowing the mirror's objects; the mirror gains no branch or worktree.
    assert (second.gitdir / "objects" / "info" / "alternates").read_text() == f"{mirror / 'objects'}\n"
    assert worktrees.git("for-each-ref", "refs/heads", cwd=mirror) == "" and not (mirror / "worktrees").exists()
    assert worktrees.git("rev-parse", "kugetsu/1-a", checkout=first) != "" and \
        worktrees.git("for-each-ref", "refs/heads/kugetsu/1-a", checkout=second) == ""


def _with_a_spare(tmp_path: Path):
    """A repository whose first issue ran, and whose spare worktree is ready: (origin, data, repo, mirror, env)."""
    origin, data = _origin(tmp_path), tmp_path / "data"
    repo = RepoRef("h.example", "o", "r")
    mirror, env = worktrees.mirror_dir(data, repo), worktrees.git_env(str(origin), "")
    worktrees.sync_mirror(mirror, str(origin), env)
    worktrees.ensure_worktree(worktrees.Checkout(mirror, worktrees.worktree_dir(data, IssueRef(repo, 1))),
                              branch="kugetsu/1-a", base="main")
    worktrees.prepare_spare(mirror)
    return origin, data, repo, mirror, env


def _racily_clean(spare: Path) -> list[str]:
    """Files git cannot trust the timestamps of: changed in the same second as the index was written, or later."""
    admin = Path((spare / ".git").read_text().removeprefix("gitdir:").strip())
    written = int((admin / "index").stat().st_mtime)
    listing = subprocess.run(["git", "-C", str(spare), "ls-files", "--debug"], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    names = [line for line in listing if not line.startswith(" ")]
    seconds = [int(line.split()[1].split(":")[0]) for line in listing if line.strip().startswith("mtime:")]
    assert len(names) == len(seconds) > 200
    return [name for name, second in zip(names, seconds) if second >= written]


def test_a_spare_is_settled_once_a_second_has_passed_so_taking_it_reads_no_file_again(tmp_path):
    _, data, repo, mirror, _ = _with_a_spare(tmp_path)
    spare = worktrees.spare_dir(mirror)
    for n in range(200):   # files written in the same second as the index: git cannot trust their timestamps
        (spare / f"many{n}.txt").write_text(f"file {n}\n")
    subprocess.run(["git", "-C", str(spare), "add", "."], check=True)
    assert not worktrees.settle_spare(mirror)                # within the second: nothing to gain yet
    wait_for(lambda: worktrees.settle_spare(mirror), timeout=10, interval=0.1, what="the spare to settle")
    assert _racily_clean(spare) == []
    assert not worktrees.settle_spare(mirror) and not worktrees.prepare_spare(mirror)   # once
    taken = worktrees.Checkout(mirror, worktrees.worktree_dir(data, IssueRef(repo, 2)))
    worktrees.ensure_worktree(taken, branch="kugetsu/2-b", base="main")
    assert (taken.worktree / "f").read_text() == "1" and not spare.exists()


def test_a_spare_takes_the_issue_branch_already_pushed(tmp_path):
    origin, data, repo, mirror, env = _with_a_spare(tmp_path)
    pushed = _commit_to(origin, tmp_path, "kugetsu/7-x", "elsewhere", "from another host")
    worktrees.sync_mirror(mirror, str(origin), env)
    seventh = worktrees.Checkout(mirror, worktrees.worktree_dir(data, IssueRef(repo, 7)))
    worktrees.ensure_worktree(seventh, branch="kugetsu/7-x", base="main")
    assert worktrees.head(seventh) == pushed and (seventh.worktree / "elsewhere").exists()
    assert not worktrees.spare_dir(mirror).exists()


def test_a_spare_without_its_git_directory_is_not_taken(tmp_path):
    _, data, repo, mirror, _ = _with_a_spare(tmp_path)
    spare = worktrees.Checkout(mirror, worktrees.spare_dir(mirror))
    shutil.rmtree(spare.gitdir)   # a crash between making the two
    second = worktrees.Checkout(mirror, worktrees.worktree_dir(data, IssueRef(repo, 2)))
    worktrees.ensure_worktree(second, branch="kugetsu/2-b", base="main")
    assert spare.worktree.exists() and (second.worktree / "f").read_text() == "1"
    assert _status(second) == ""
    assert worktrees.prepare_spare(mirror) and spare.gitdir.is_dir()   # housekeeping makes it anew


def test_housekeeping_makes_each_repositorys_spare_and_skips_a_broken_mirror(tmp_path, caplog):
    from forge_bridge.work.lifecycle import prepare_spares

    origin, data = _origin(tmp_path), tmp_path / "data"
    good, broken = RepoRef("h.example", "o", "good"), RepoRef("h.example", "o", "broken")
    for repo in (good, broken):
        mirror = worktrees.mirror_dir(data, repo)
        worktrees.sync_mirror(mirror, str(origin), worktrees.git_env(str(origin), ""))
        worktrees.ensure_worktree(worktrees.Checkout(mirror, worktrees.worktree_dir(data, IssueRef(repo, 1))),
                                  branch="kugetsu/1-a", base="main")
    broken_spare = worktrees.spare_dir(worktrees.mirror_dir(data, broken))
    broken_spare.parent.mkdir(parents=True)
    broken_spare.symlink_to(tmp_path / "seed" / "f")   # in the way, and never followed or removed
    assert prepare_spares(data) == [worktrees.spare_dir(worktrees.mirror_dir(data, good))]
    assert "no spare worktree for h.example-o-broken.git" in caplog.text
    assert (tmp_path / "seed" / "f").read_text() == "1"


def test_a_trailer_is_added_to_each_unpushed_commit_and_never_to_pushed_ones(tmp_path):
    origin, checkout, env = _issue_worktree(tmp_path, 3, "kugetsu/3-x")
    pushed_before = worktrees.head(checkout)
    for name in ("a", "b"):
        (checkout.worktree / name).write_text(name)
        worktrees.commit_leftovers(checkout, f"add {name}\n\nBecause.", author="agent")
    trailer = "Co-authored-by: Alice <7+alice@users.noreply.github.com>"
    assert worktrees.add_trailer(checkout, trailer) == 2
    log = worktrees.git("log", "--format=%s|%an|%(trailers:key=Co-authored-by,valueonly)", checkout=checkout)
    lines = [line for line in log.splitlines() if line]
    assert lines[:2] == ["add b|agent|Alice <7+alice@users.noreply.github.com>",
                         "add a|agent|Alice <7+alice@users.noreply.github.com>"]
    assert worktrees.git("rev-parse", "HEAD~2", checkout=checkout) == pushed_before   # the base is untouched
    assert worktrees.git("status", "--porcelain", checkout=checkout) == ""
    assert worktrees.add_trailer(checkout, trailer) == 2      # idempotent: no second trailer
    assert worktrees.git("log", "-1", "--format=%B", checkout=checkout).count("Co-authored-by") == 1
    worktrees.push(checkout, "kugetsu/3-x", str(origin), env)
    worktrees.sync_mirror(checkout.mirror, str(origin), env)
    assert worktrees.add_trailer(checkout, "Co-authored-by: Bob <b@example.com>") == 0   # all on the remote now


def test_a_worktree_an_earlier_version_made_in_the_mirror_gets_a_repository_of_its_own(tmp_path):
    """Earlier versions made each worktree a worktree of the mirror itself: such a worktree keeps its branch,
    its commits and its uncommitted edits, and leaves the mirror."""
    origin, data = _origin(tmp_path), tmp_path / "data"
    issue = IssueRef(RepoRef("h.example", "o", "r"), 5)
    checkout = worktrees.Checkout(worktrees.mirror_dir(data, issue.repo), worktrees.worktree_dir(data, issue))
    worktrees.sync_mirror(checkout.mirror, str(origin), worktrees.git_env(str(origin), ""))
    checkout.worktree.parent.mkdir(parents=True)
    worktrees.git("worktree", "add", "--quiet", "-b", "kugetsu/5-x", str(checkout.worktree), "origin/main",
                  cwd=checkout.mirror)
    (checkout.worktree / "done").write_text("committed")
    subprocess.run(["git", "-C", str(checkout.worktree), "add", "done"], check=True)
    subprocess.run(["git", "-C", str(checkout.worktree), "-c", "user.name=a", "-c", "user.email=a@b", "commit",
                    "-qm", "earlier work"], check=True)
    made = subprocess.run(["git", "-C", str(checkout.worktree), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (checkout.worktree / "f").write_text("edited, not committed")

    worktrees.ensure_worktree(checkout, branch="kugetsu/5-x", base="main")

    assert (checkout.worktree / ".git").read_text() == f"gitdir: {checkout.gitdir}\n"
    assert worktrees.head(checkout) == made
    assert worktrees.git("rev-parse", "--abbrev-ref", "HEAD", checkout=checkout) == "kugetsu/5-x"
    assert _status(checkout) == "M f" and (checkout.worktree / "f").read_text() == "edited, not committed"
    assert not (checkout.mirror / "worktrees" / checkout.worktree.name).exists()


def test_an_issue_repository_follows_the_mirror_s_remote_branches_added_moved_and_deleted(tmp_path):
    origin, checkout, env = _issue_worktree(tmp_path, 6, "kugetsu/6-x")
    added = _commit_to(origin, tmp_path, "feature", "feature", "new")
    moved = _commit_to(origin, tmp_path, "main", "later", "on main")
    worktrees.sync_mirror(checkout.mirror, str(origin), env)
    worktrees.refresh_remotes(checkout)
    remotes = worktrees.git("for-each-ref", "--format=%(refname) %(objectname)", "refs/remotes", checkout=checkout)
    assert remotes.splitlines() == [f"refs/remotes/origin/feature {added}", f"refs/remotes/origin/main {moved}"]
    subprocess.run(["git", "-C", str(origin), "branch", "-D", "feature"], check=True, capture_output=True)
    worktrees.sync_mirror(checkout.mirror, str(origin), env)
    worktrees.refresh_remotes(checkout)
    assert worktrees.git("for-each-ref", "--format=%(refname)", "refs/remotes", checkout=checkout) == \
        "refs/remotes/origin/main"


def test_an_earlier_worktree_whose_branch_the_mirror_lacks_starts_its_branch_from_the_base(tmp_path):
    origin, data = _origin(tmp_path), tmp_path / "data"
    issue = IssueRef(RepoRef("h.example", "o", "r"), 8)
    checkout = worktrees.Checkout(worktrees.mirror_dir(data, issue.repo), worktrees.worktree_dir(data, issue))
    worktrees.sync_mirror(checkout.mirror, str(origin), worktrees.git_env(str(origin), ""))
    checkout.worktree.parent.mkdir(parents=True)
    worktrees.git("worktree", "add", "--quiet", "--detach", str(checkout.worktree), "origin/main", cwd=checkout.mirror)
    (checkout.worktree / "new").write_text("not committed")

    worktrees.ensure_worktree(checkout, branch="kugetsu/8-x", base="main")

    assert worktrees.git("rev-parse", "--abbrev-ref", "HEAD", checkout=checkout) == "kugetsu/8-x"
    assert worktrees.head(checkout) == worktrees.git("rev-parse", "origin/main", cwd=checkout.mirror)
    assert _status(checkout) == "?? new"


def test_the_mirror_never_prunes_what_an_issue_repository_borrows(tmp_path):
    """A branch deleted on the forge leaves its commits unreachable in the mirror; an issue's repository that
    started from it still needs them: no automatic gc runs in the mirror, and compacting its packs keeps them."""
    origin, data = _origin(tmp_path), tmp_path / "data"
    repo = RepoRef("h.example", "o", "r")
    mirror, env = worktrees.mirror_dir(data, repo), worktrees.git_env(str(origin), "")
    pushed = _commit_to(origin, tmp_path, "kugetsu/9-x", "elsewhere", "made on another host")
    worktrees.sync_mirror(mirror, str(origin), env)
    checkout = worktrees.Checkout(mirror, worktrees.worktree_dir(data, IssueRef(repo, 9)))
    worktrees.ensure_worktree(checkout, branch="kugetsu/9-x", base="main")
    subprocess.run(["git", "-C", str(origin), "branch", "-D", "kugetsu/9-x"], check=True, capture_output=True)
    worktrees.sync_mirror(mirror, str(origin), env)   # the mirror's ref is pruned: the commit is unreachable there
    everything = worktrees.git("cat-file", "--batch-all-objects", "--batch-check=%(objectname)", cwd=mirror)
    for half in (everything.splitlines()[::2], everything.splitlines()[1::2]):   # in packs only, two of them
        worktrees.git("pack-objects", "-q", str(mirror / "objects" / "pack" / "pack"), cwd=mirror,
                      input="\n".join(half) + "\n")
    worktrees.git("prune-packed", cwd=mirror)

    # What a fetch's automatic gc would do once packs pile up, pruning at once: nothing, in the mirror.
    worktrees.git("-c", "gc.autoPackLimit=1", "-c", "gc.pruneExpire=now", "gc", "--auto", "--quiet", cwd=mirror)
    assert len(list((mirror / "objects" / "pack").glob("*.pack"))) == 2
    assert worktrees.compact_mirror(mirror, max_packs=1)   # housekeeping's own packing keeps everything
    assert len(list((mirror / "objects" / "pack").glob("*.pack"))) == 1
    assert worktrees.git("cat-file", "-t", pushed, checkout=checkout) == "commit"
    assert worktrees.git("fsck", "--connectivity-only", "--no-dangling", checkout=checkout) == ""
