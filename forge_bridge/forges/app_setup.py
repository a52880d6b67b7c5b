"""`forge-bridge github-app create`: set up a GitHub App the manifest way (as Probot does). While the command
runs it serves `GET /setup/github-app`, a page whose button posts the App's manifest to GitHub; GitHub sends
the browser back to `GET /setup/github-app/callback?code=…`, and the code is exchanged for the App's id, key
and webhook secret, stored under `<data_dir>/github-app/`. The routes exist only while the command runs."""
from __future__ import annotations

import html
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import requests
from flask import Flask, make_response, request
from werkzeug.serving import make_server

from forge_bridge.config import ConfigError, ForgeConfig, Settings

SETUP_PATH = "/setup/github-app"
CALLBACK_PATH = f"{SETUP_PATH}/callback"
PERMISSIONS = {"contents": "write", "issues": "write", "pull_requests": "write", "metadata": "read",
               "checks": "read", "statuses": "read"}
EVENTS = ("issues", "issue_comment", "pull_request", "pull_request_review", "pull_request_review_comment",
          "check_suite", "status")
CONVERSION_TIMEOUT = 30


def manifest(public_url: str, *, name: str) -> dict:
    """What GitHub creates the App from (its manifest parameters)."""
    return {"name": name, "url": public_url, "public": False,
            "hook_attributes": {"url": f"{public_url}/webhooks/github", "active": True},
            "redirect_url": f"{public_url}{CALLBACK_PATH}", "default_permissions": dict(PERMISSIONS),
            "default_events": list(EVENTS)}


def creation_url(forge_url: str, *, org: str, state: str) -> str:
    """GitHub's (or GitHub Enterprise's) page that takes a posted manifest: the user's, or an organization's."""
    where = f"organizations/{org}/settings/apps/new" if org else "settings/apps/new"
    return f"{forge_url}/{where}?state={state}"


def setup_page(forge_url: str, app_manifest: dict, *, org: str, state: str) -> str:
    owner = f"the organization {org}" if org else "your account"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Create the GitHub App</title></head>
<body><h1>Create forge-bridge's GitHub App</h1>
<p>GitHub will show the App's name, permissions and events for {html.escape(owner)} before creating it.</p>
<form method="post" action="{html.escape(creation_url(forge_url, org=org, state=state))}">
<input type="hidden" name="manifest" value="{html.escape(json.dumps(app_manifest))}">
<button type="submit">Create the GitHub App on {html.escape(forge_url)}</button></form></body></html>"""


@dataclass(frozen=True)
class CreatedApp:
    id: int
    slug: str
    html_url: str
    folder: Path

    @property
    def key_file(self) -> Path:
        return self.folder / "private-key.pem"

    @property
    def secret_file(self) -> Path:
        return self.folder / "webhook-secret"


def _private_file(path: Path, text: str) -> None:
    """Created with mode 0600 from the start: the key is never readable by others, not even for a moment."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)


def convert(forge: ForgeConfig, code: str, data_dir: Path) -> CreatedApp:
    """Exchange GitHub's one-time code for the App (`POST /app-manifests/{code}/conversions`) and store it."""
    if not code.replace("-", "").replace("_", "").isalnum():
        raise ValueError("the code GitHub sent back is not a code")
    try:
        answer = requests.post(f"{forge.api_url}/app-manifests/{code}/conversions", timeout=CONVERSION_TIMEOUT,
                               headers={"Accept": "application/vnd.github+json"})
    except requests.RequestException as error:
        raise ValueError(f"GitHub could not be reached to finish the App ({type(error).__name__})") from None
    if answer.status_code != 201:
        raise ValueError(f"GitHub refused to finish the App ({answer.status_code}): the code is used once and "
                         "lives an hour; start again")
    app = answer.json()
    folder = data_dir / "github-app"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    created = CreatedApp(id=int(app["id"]), slug=app["slug"], html_url=app.get("html_url", ""), folder=folder)
    _private_file(created.key_file, app["pem"])
    _private_file(created.secret_file, app["webhook_secret"])
    (folder / "app.json").write_text(json.dumps({"id": created.id, "slug": created.slug,
                                                 "html_url": created.html_url}, indent=2) + "\n")
    return created


def configuration_lines(forge: ForgeConfig, created: CreatedApp) -> str:
    return "\n".join([
        "[[forges]]", f'name = "{forge.name}"', 'kind = "github"', f'url = "{forge.url}"',
        f"app_id = {created.id}", f'private_key_file = "{created.key_file}"',
        'webhook_secret_env = "GITHUB_WEBHOOK_SECRET"',
        "", f'# export GITHUB_WEBHOOK_SECRET="$(cat {created.secret_file})"',
        f"# then install the App on your repositories: {created.html_url}/installations/new"])


def github_forge(settings: Settings, name: str) -> ForgeConfig:
    """The configured GitHub forge to create the App on (by name), or github.com."""
    from forge_bridge.models import ForgeKind

    github = [forge for forge in settings.forges if forge.kind is ForgeKind.GITHUB]
    if name:
        found = [forge for forge in github if forge.name == name]
        if not found:
            raise ConfigError(f"{settings.source}: no GitHub forge named {name!r}")
        return found[0]
    if len(github) > 1:
        raise ConfigError(f"{settings.source}: several GitHub forges; name one with --forge")
    return github[0] if github else ForgeConfig(name="github", kind=ForgeKind.GITHUB, url="https://github.com",
                                                api_url="https://api.github.com")


def setup_app(forge: ForgeConfig, data_dir: Path, public_url: str, *, org: str, name: str,
              done: threading.Event, result: list) -> Flask:
    """The two routes, for as long as the command runs; `result` receives the CreatedApp."""
    state, app_manifest = secrets.token_urlsafe(24), manifest(public_url, name=name)
    app = Flask("forge_bridge_setup")

    @app.get(SETUP_PATH)
    def page():
        return setup_page(forge.url, app_manifest, org=org, state=state)

    @app.get(CALLBACK_PATH)
    def callback():
        if not secrets.compare_digest(request.args.get("state", ""), state):
            return "This answer was not for the page this command served (state mismatch); start from " \
                   f"{SETUP_PATH}.", 400
        try:
            created = convert(forge, request.args.get("code", ""), data_dir)
        except ValueError as error:
            return html.escape(str(error)), 502
        result.append(created)
        install = f"{created.html_url}/installations/new"
        answer = make_response(f"<!doctype html><p>GitHub App <strong>{html.escape(created.slug)}</strong> (id {created.id}) is "
                f"created and stored in {html.escape(str(created.folder))}. Next: "
                f'<a href="{html.escape(install)}">install it on your repositories</a>, then add the lines the '
                "command printed to your configuration.</p>")
        answer.call_on_close(done.set)   # the command ends once the browser has this page
        return answer

    return app


def run_setup(settings: Settings, *, public_url: str, org: str, name: str, bind: str, forge_name: str = "",
              say=print) -> CreatedApp:
    forge = github_forge(settings, forge_name)
    done, result = threading.Event(), []
    host, _, port = bind.rpartition(":")
    server = make_server(host.strip("[]") or "127.0.0.1", int(port), setup_app(
        forge, settings.data_dir, public_url, org=org, name=name, done=done, result=result), threaded=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    say(f"Open {public_url}{SETUP_PATH} in a browser (listening on {bind}) and press the button; "
        f"GitHub sends you back here when the App is created.")
    try:
        done.wait()
    finally:
        server.shutdown()
    return result[0]
