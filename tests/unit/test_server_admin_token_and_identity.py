"""The server's side of the per-model admin credential and of counting traffic by what answered: the token comes
from the mounted Secret's file (re-read, so a replaced Secret takes effect without a restart), and every answer
names the version, sha256 and track of the server that made it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from model_server.app import HEADER_SHA256, HEADER_TRACK, HEADER_VERSION, ModelServer
from model_server.config import Settings
from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train
from model_server.testing import serve_in_thread


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> DemoArtifact:
    return build_demo_artifact(tmp_path_factory.mktemp("artifact"), trained=train("logistic", 3, 200, seed=3))


def test_the_admin_token_is_read_from_the_mounted_file_and_follows_its_changes(artifact: DemoArtifact,
                                                                              tmp_path: Path) -> None:
    token_file = tmp_path / "admin" / "token"
    settings = Settings(model_name="m", model_version="v7", model_track="canary", artifact_dir=artifact.directory,
                        artifact_sha256=artifact.sha256, model_format="skops", admin_token="from-env",
                        admin_token_file=token_file, feedback_dsn=str(tmp_path / "fb.sqlite3"), warmup_rounds=1)
    with serve_in_thread(ModelServer(settings)) as url:
        def flush(token: str) -> httpx.Response:
            return httpx.post(f"{url}/admin/flush", headers={"Authorization": f"Bearer {token}"})

        assert flush("from-env").status_code == 403, "no file yet: admin is off, the env token does not stand in"
        token_file.parent.mkdir()
        token_file.write_text("first\n")
        assert flush("first").status_code == 200
        token_file.write_text("second")  # the kubelet swapped the Secret's content
        assert flush("first").status_code == 401 and flush("second").status_code == 200

        answer = httpx.get(f"{url}/v2/health/live")
        assert (answer.headers[HEADER_VERSION], answer.headers[HEADER_SHA256], answer.headers[HEADER_TRACK]) == (
            "v7", artifact.sha256, "canary")
        refused = flush("wrong")
        assert refused.status_code == 401 and refused.headers[HEADER_SHA256] == artifact.sha256, \
            "errors say who answered too"


def test_the_token_file_setting_reads_from_the_environment() -> None:
    env = {"MODEL_NAME": "m", "MODEL_VERSION": "v1", "ARTIFACT_DIR": "/a", "ARTIFACT_SHA256": "a" * 64,
           "MODEL_FORMAT": "skops", "ADMIN_TOKEN_FILE": "/etc/modelwarden/admin/token"}
    assert Settings.from_env(env).admin_token_file == Path("/etc/modelwarden/admin/token")
    assert Settings.from_env({**env, "ADMIN_TOKEN_FILE": ""}).admin_token_file is None
