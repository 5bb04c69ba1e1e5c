"""Token settings a gateway refuses to start with (shared/settings.py check_jwt)."""

import pytest

from switchboard.shared.settings import DEV_JWT_SECRET, GatewaySettings, SettingsError

GOOD = "0123456789abcdef" * 2  # 32 bytes


def test_the_development_key_needs_development_mode():
    with pytest.raises(SettingsError, match="development key.*SWITCHBOARD_DEV=1"):
        GatewaySettings.from_env({})
    with pytest.raises(SettingsError, match="development key"):
        GatewaySettings.from_env({"JWT_SECRET": DEV_JWT_SECRET, "SWITCHBOARD_DEV": "0"})
    assert GatewaySettings.from_env({"SWITCHBOARD_DEV": "1"}).dev_mode


@pytest.mark.parametrize("secret", ["k", "change-me", GOOD[:-1]])
def test_hmac_secrets_under_32_bytes_are_refused_even_in_development(secret):
    for env in ({"JWT_SECRET": secret}, {"JWT_SECRET": secret, "SWITCHBOARD_DEV": "1"}):
        with pytest.raises(SettingsError, match="at least 32"):
            GatewaySettings.from_env(env)


def test_jwt_defaults_and_overrides():
    s = GatewaySettings.from_env({"JWT_SECRET": GOOD})
    assert (s.jwt_algorithms, s.jwt_audience, s.jwt_issuer, s.jwt_leeway, s.jwt_max_lifetime, s.dev_mode) == (
        ("HS256",), None, None, 5.0, 86_400.0, False)
    s = GatewaySettings.from_env({"JWT_SECRET": GOOD, "JWT_ALGORITHMS": "HS256, HS512", "JWT_AUDIENCE": "sb",
                                  "JWT_ISSUER": "https://id", "JWT_LEEWAY": "0", "JWT_MAX_LIFETIME": "3600"})
    assert (s.jwt_algorithms, s.jwt_audience, s.jwt_issuer, s.jwt_leeway, s.jwt_max_lifetime) == (
        ("HS256", "HS512"), "sb", "https://id", 0.0, 3600.0)


@pytest.mark.parametrize("env, message", [
    ({"JWT_ALGORITHMS": "none"}, "never accepted"),
    ({"JWT_ALGORITHMS": "HS256,none"}, "never accepted"),
    ({"JWT_ALGORITHMS": " , "}, "never accepted"),
    ({"JWT_ALGORITHMS": "HS257"}, "unknown"),
    ({"JWT_ALGORITHMS": "HS256,RS256", "JWT_PUBLIC_KEY_FILE": "/k.pem"}, "algorithm confusion"),
    ({"JWT_ALGORITHMS": "RS256"}, "exactly one of"),
    ({"JWT_ALGORITHMS": "ES256", "JWT_PUBLIC_KEY_FILE": "/k.pem", "JWT_JWKS_FILE": "/j.json"}, "exactly one of"),
    ({"JWT_PUBLIC_KEY_FILE": "/k.pem"}, "need public-key JWT_ALGORITHMS"),
    ({"JWT_LEEWAY": "-1"}, "JWT_LEEWAY"),
    ({"JWT_MAX_LIFETIME": "0"}, "JWT_MAX_LIFETIME"),
])
def test_unusable_token_settings_are_refused_with_a_reason(env, message):
    with pytest.raises(SettingsError, match=message):
        GatewaySettings.from_env({"JWT_SECRET": GOOD, **env})


def test_public_key_algorithms_need_no_secret():
    s = GatewaySettings.from_env({"JWT_ALGORITHMS": "RS256,ES256", "JWT_JWKS_FILE": "/j.json"})
    assert s.jwt_algorithms == ("RS256", "ES256") and s.jwt_jwks_file == "/j.json"
