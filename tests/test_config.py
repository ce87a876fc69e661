"""Building a client: builder, keyword options, environment, and option validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from ekoclient import AsyncClient, Client
from ekoclient.errors import ConfigurationError

KEY = "eko_test_" + "S3cr3t" * 7


def test_builder_and_keywords_make_the_same_options(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not used until a connection is made")
    built = (Client.builder().base_url("https://127.0.0.1:8443").api_key(KEY)
             .retry(max_attempts=7, initial=0.1, maximum=2.0)
             .pool(max_connections=10, max_keepalive=5).timeout(connect=1, read=2)
             .verify(False).build())
    direct = Client(base_url="https://127.0.0.1:8443", api_key=KEY, verify=False,
                    retry={"max_attempts": 7, "initial": 0.1, "maximum": 2.0},
                    pool={"max_connections": 10, "max_keepalive": 5},
                    timeout={"connect": 1, "read": 2})
    assert built.options == direct.options
    assert built.options.retry.max_attempts == 7
    assert built.options.timeout.read == 2 and built.options.timeout.write == 30
    built.close()
    direct.close()


def test_from_env_reads_the_three_variables(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----")
    env = {"EKODB_URL": "https://127.0.0.1:8443", "EKODB_API_KEY": KEY,
           "EKODB_CA_BUNDLE": str(ca)}
    with pytest.raises(Exception):  # the file is not a real CA: the SSL context refuses it
        Client.from_env(env)
    with Client.from_env(env, ca_bundle=None, verify=False) as c:
        assert c.options.hosts == ("https://127.0.0.1:8443",)
        assert c.options.api_key is not None
        assert c.options.api_key.get_secret_value() == KEY


def test_from_env_without_url_says_what_to_set() -> None:
    with pytest.raises(ConfigurationError, match="EKODB_URL"):
        Client.from_env({})


@pytest.mark.parametrize("url", ["http://db.example.com", "http://10.0.0.5:8080"])
def test_plain_http_to_a_remote_host_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="allow_insecure"):
        Client(base_url=url)


def test_plain_http_to_a_remote_host_with_allow_insecure_is_accepted() -> None:
    with Client(base_url="http://db.example.com", allow_insecure=True) as c:
        assert c.options.allow_insecure


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:2"])
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    Client(base_url=url).close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_url": "ftp://x"}, "http"),
        ({"base_url": "https://u:p@host"}, "credentials"),
        ({}, "base_url"),
        ({"base_url": "https://h", "retry": {"max_attempts": 0}}, "retry.max_attempts"),
        ({"base_url": "https://h", "pool": {"max_connections": 0}}, "pool.max_connections"),
        ({"base_url": "https://h", "ca_bundle": "/nonexistent/ca.pem"}, "CA bundle"),
        ({"base_url": "https://h", "retry": {"bogus": 1}}, "bogus"),
    ],
)
def test_invalid_options_say_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Client(**kwargs)  # type: ignore[arg-type]


def test_base_url_and_hosts_are_exclusive() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        Client(base_url="https://a", hosts=["https://b"])


def test_user_agent_names_sdk_and_python() -> None:
    with Client(base_url="https://h", user_agent_suffix="myapp/2") as c:
        assert c.options.user_agent.startswith("ekoclient/")
        assert " python/3." in c.options.user_agent
        assert c.options.user_agent.endswith(" myapp/2")


def test_no_secret_in_repr_of_client_builder_options_or_views() -> None:
    builder = Client.builder().base_url("https://h").api_key(KEY)
    with builder.build() as c:
        from ekoclient import Authenticator

        view = Authenticator(c).using_credentials(KEY)
        texts = [repr(builder), repr(c), str(c), repr(c.options), str(c.options),
                 repr(view), repr(view.datastore), repr(c.admin)]
    for text in texts:
        assert KEY not in text and "S3cr3t" not in text
    assert "eko_test_…#" in repr(c)


def test_calls_without_a_key_explain_how_to_give_one() -> None:
    with Client(base_url="https://127.0.0.1:9") as c, pytest.raises(
            ConfigurationError, match="using_credentials"):
        c.datastore.find("users")


async def test_async_client_builder_builds_an_async_client() -> None:
    client = AsyncClient.builder().base_url("https://127.0.0.1:1").api_key(KEY).build()
    assert isinstance(client, AsyncClient)
    await client.aclose()
