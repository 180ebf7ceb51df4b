"""The extension's conventions: app factory, two apps in one process, double init, settings,
Flask-SQLAlchemy's engine, the preview renderer."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import select

from flask_hotclicks import DEFAULT_CONFIG, HotClicks, Preview, get_state
from hotclicks.errors import ConfigurationError
from hotclicks.db.models import Click, TestProfile

from .conftest import SECRET_KEY
from .flask_seed import TARGETS, send

BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"}
hotclicks = HotClicks()  # as an app factory's module would hold it


def create_app(database_url: str, **config) -> Flask:
    app = Flask("factory")
    app.config.update(HOTCLICKS_DATABASE_URL=database_url, HOTCLICKS_SECRET_KEY=SECRET_KEY, **config)
    hotclicks.init_app(app)
    return app


def test_an_app_factory_and_two_apps_in_one_process(engine, database_url, sessions):
    first = create_app(database_url, HOTCLICKS_TRACKING_PREFIX="/t")
    second = create_app(database_url, HOTCLICKS_BASE_URL="https://links.example/go")
    try:
        assert get_state(first) is not get_state(second)
        assert get_state(first).extension is get_state(second).extension is hotclicks
        sent = send(sessions)
        path = sent.click(0)  # /t/c/<token>
        assert first.test_client().get(path, headers=BROWSER).headers["Location"] == TARGETS[0]
        assert second.test_client().get(path.replace("/t/", "/go/"), headers=BROWSER).status_code == 302
        assert second.test_client().get(path, headers=BROWSER).status_code == 404
        with sessions() as session:
            assert len(session.scalars(select(Click)).all()) == 2
    finally:
        get_state(first).dispose()
        get_state(second).dispose()


def test_a_second_init_app_says_what_to_do(app):
    with pytest.raises(RuntimeError, match=r"already set up on this app: call init_app\(app\) once"):
        HotClicks(app)


def test_every_setting_has_its_default_in_the_config(app):
    for key, value in DEFAULT_CONFIG.items():
        assert key.startswith("HOTCLICKS_")
        assert key in app.config
    assert DEFAULT_CONFIG["HOTCLICKS_ANONYMIZE_IP"] is True


def test_the_apps_secret_key_is_used_when_none_is_given(engine, database_url, sessions):
    app = Flask("plain")
    app.config.update(HOTCLICKS_DATABASE_URL=database_url, SECRET_KEY=SECRET_KEY)
    HotClicks(app)
    try:
        assert app.test_client().get(send(sessions).click(1), headers=BROWSER).status_code == 302
    finally:
        get_state(app).dispose()


def test_a_missing_secret_key_or_bad_base_url_fails_at_start_with_how_to_fix_it(database_url):
    app = Flask("nokey")
    app.config.update(HOTCLICKS_DATABASE_URL=database_url)
    with pytest.raises(ConfigurationError, match="set HOTCLICKS_SECRET_KEY"):
        HotClicks(app)
    app = Flask("badbase")
    app.config.update(HOTCLICKS_DATABASE_URL=database_url, HOTCLICKS_SECRET_KEY=SECRET_KEY,
                      HOTCLICKS_BASE_URL="links.example/t")
    with pytest.raises(ConfigurationError, match="HOTCLICKS_BASE_URL must be an http"):
        HotClicks(app)
    assert "hotclicks" not in app.extensions


def test_the_engine_of_flask_sqlalchemy_can_be_reused(engine, database_url, sessions):
    from flask_sqlalchemy import SQLAlchemy

    app = Flask("with_fsa")
    app.config.update(SQLALCHEMY_DATABASE_URI=database_url, HOTCLICKS_SECRET_KEY=SECRET_KEY,
                      HOTCLICKS_USE_FLASK_SQLALCHEMY=True)
    fsa = SQLAlchemy()
    fsa.init_app(app)
    HotClicks(app)
    try:
        with app.app_context():
            assert get_state(app).engine is fsa.engine
        assert app.test_client().get(send(sessions).click(0), headers=BROWSER).status_code == 302
        with sessions() as session:
            assert len(session.scalars(select(Click)).all()) == 1
    finally:
        get_state(app).dispose()  # leaves Flask-SQLAlchemy's engine alone
        with app.app_context():
            fsa.engine.dispose()


def test_flask_sqlalchemy_must_be_set_up_first(database_url):
    app = Flask("without_fsa")
    app.config.update(HOTCLICKS_SECRET_KEY=SECRET_KEY, HOTCLICKS_USE_FLASK_SQLALCHEMY=True)
    with pytest.raises(ConfigurationError, match="Flask-SQLAlchemy is not set up"):
        HotClicks(app)


def test_a_preview_renderer_renders_for_a_profile_or_for_none(app, sessions):
    extension = get_state(app).extension
    assert extension.render_preview("spring-news") is None  # none registered

    @extension.preview_renderer
    def render(delivery: str, profile: TestProfile | None):
        name = profile.attributes.get("first_name") if profile else None
        if delivery != "spring-news":
            return None
        return {"html": f"<p>Hello {name or 'there'}</p>", "text": f"Hello {name or 'there'}"}

    profile = TestProfile(name="Ann", address="ann@test.example", attributes={"first_name": "Ann"})
    assert extension.render_preview("spring-news", profile) == Preview("<p>Hello Ann</p>", "Hello Ann")
    assert extension.render_preview("spring-news").html == "<p>Hello there</p>"
    assert extension.render_preview("other") is None


def test_every_setting_is_documented():
    from pathlib import Path

    reference = (Path(__file__).resolve().parents[1] / "docs" / "flask-extension.md").read_text()
    missing = [key for key in DEFAULT_CONFIG if f"`{key}`" not in reference]
    assert missing == []
