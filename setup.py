"""HotClicks: email click tracking as an SMTP relay plus a Flask extension."""

from setuptools import setup

setup(
    name="hotclicks",
    version="0.1.0",
    description=(
        "Email click tracking: an SMTP relay that rewrites links into signed tracked links, "
        "and a Flask extension with the redirect routes and the hot clicks report."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=[
        "hotclicks",
        "hotclicks.db",
        "hotclicks.migrations",
        "hotclicks.migrations.versions",
        "flask_hotclicks",
        "smtp_relay",
    ],
    # The Alembic lineage lives at the top level of the repository (the design's layout) and is
    # shipped inside the core package so both halves can migrate an installed database.
    package_dir={"hotclicks.migrations": "migrations"},
    package_data={
        "hotclicks": ["py.typed", "data/networks/*.txt"],
        "hotclicks.migrations": ["script.py.mako", "alembic.ini"],
        "flask_hotclicks": ["py.typed", "templates/hotclicks/*.html", "static/hotclicks/*"],
        "smtp_relay": ["py.typed"],
    },
    install_requires=[
        "flask>=3.0",
        "aiosmtpd>=1.4.4,<1.5",
        "aiosmtplib>=3.0",
        "sqlalchemy>=2.0.30",
        "alembic>=1.13",
        "beautifulsoup4>=4.12",
    ],
    extras_require={
        "postgresql": ["psycopg[binary]>=3.1"],
        "dkim": ["dkimpy>=1.1"],
        "example": ["flask-mailman>=1.1"],
        "test": [
            "pytest>=8.0",
            "hypothesis>=6.100",
            # The rewriter's links are checked against the HTML spec's tokenizer.
            "html5lib>=1.1",
            "psycopg[binary]>=3.1",
            "dkimpy>=1.1",
            # The relay's TLS and DKIM tests make their own keys and certificates.
            "cryptography>=41",
            "playwright>=1.45",
            "flask-mailman>=1.1",
            # The Flask extension's tests: the mail and ORM extensions a host app may use.
            "flask-mail>=0.10",
            "flask-sqlalchemy>=3.1",
            # The quick click storm serves the click routes with gunicorn workers, as deployed.
            "gunicorn>=22.0",
        ],
    },
    entry_points={
        "console_scripts": ["hotclicks-relay = smtp_relay.cli:main"],
    },
    classifiers=[
        "Framework :: Flask",
        "Programming Language :: Python :: 3",
        "Topic :: Communications :: Email",
    ],
)
