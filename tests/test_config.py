"""Config precedence (defaults < file < environment < flags), flag by flag, and errors that name key, value and rule."""

import os

import pytest

from edge.config import Config, ConfigError, commented_toml, load_config


def write(tmp_path, text):
    path = tmp_path / "hearth.toml"
    path.write_text(text)
    return str(path)


def test_precedence_setting_by_setting(tmp_path):
    path = write(tmp_path, 'transport_port = 5000\nnode_name = "file"\nmdns = false\nquota = 100\n')
    env = {"HEARTH_NODE_NAME": "env", "HEARTH_MDNS": "yes"}
    c = load_config(path, env=env, flags={"node_name": None, "quota": 7})
    assert c.transport_port == 5000          # file over default
    assert c.node_name == "env"              # environment over file; a flag left at None changes nothing
    assert c.mdns is True                    # environment over file
    assert c.quota == 7                      # flag over file
    assert c.metrics_port == Config().metrics_port   # default


def test_the_data_dir_file_is_read_when_present(tmp_path):
    (tmp_path / "hearth.toml").write_text("transport_port = 4999\n")
    assert load_config(env={"HEARTH_DATA_DIR": str(tmp_path)}).transport_port == 4999
    assert load_config(flags={"data_dir": str(tmp_path)}, env={}).transport_port == 4999


@pytest.mark.parametrize("text, env, words", [
    ("transport_port = 70000\n", {}, "transport_port = 70000 is out of range; allowed 0 to 65535"),
    ('admission = "closed"\n', {}, "choose one of open, fleet"),
    ("mdns = 3\n", {}, "mdns must be true or false"),
    ("colour = 1\n", {}, "unknown setting 'colour'"),
    ("transport_port = \n", {}, "not valid TOML"),
    ("", {"HEARTH_QUOTA": "lots"}, "environment HEARTH_QUOTA: quota = 'lots' is not allowed; quota must be a whole number"),
    ('admission = "fleet"\n', {}, "needs fleet_key"),
])
def test_bad_values_name_key_value_and_rule(tmp_path, text, env, words):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env=env)
    assert words in str(err.value)


def test_the_commented_file_loads_back_to_the_defaults(tmp_path):
    path = write(tmp_path, commented_toml(Config()))
    assert load_config(path, env={}) == Config()
    assert "# transport_port = 4801" in open(path).read()


def test_init_makes_a_private_identity_and_a_config(tmp_path):
    from click.testing import CliRunner

    from edge.cli import main
    from edge.identity import IdentityError, Identity
    runner = CliRunner()
    out = runner.invoke(main, ["--data-dir", str(tmp_path), "init"])
    assert out.exit_code == 0, out.output
    key = tmp_path / "identity.key"
    assert os.stat(key).st_mode & 0o777 == 0o600
    node = Identity.load(str(key)).node_id
    assert node in out.output and (tmp_path / "hearth.toml").exists()
    again = runner.invoke(main, ["--data-dir", str(tmp_path), "init"])
    assert "already initialised" in again.output and node in again.output
    os.chmod(key, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load(str(key))
