"""Config precedence (defaults < file < environment < flags), flag by flag, and errors that name key, value and rule."""

import os
import re

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
    ("", {"HEARTH_QUOTA": "lots"}, "environment HEARTH_QUOTA: quota = 'lots' is not allowed; quota must be a number of "
                                   "bytes with an optional unit: K, M, G, T for powers of 1000 (200G), KiB, MiB"),
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


# sizes and rates: one parser (edge/units.py) for the file, the environment, flags and seeds -------------------

SIZES = [("200G", 200 * 10**9), ("200GB", 200 * 10**9), ("500GiB", 500 * 2**30), ("2.5M", 2_500_000),
         ("2.3M", 2_300_000), ("16MiB", 16 << 20), ("64 mib", 64 << 20), ("1.5TB", 1_500_000_000_000),
         ("1T", 10**12), ("2TiB", 2 << 40), ("500K", 500_000), ("500kb", 500_000), ("4KiB", 4096), (".5K", 500),
         ("12345", 12345), ("0", 0), (" 7 ", 7), ("300b", 300)]


@pytest.mark.parametrize("text, expected", SIZES)
def test_every_size_form_parses_alike_in_every_source(tmp_path, text, expected):
    from edge.provisioning.seed import settings_from_seed
    from edge.units import parse_size
    assert parse_size(text) == expected
    assert load_config(write(tmp_path, f'quota = "{text}"\n'), env={}).quota == expected        # hearth.toml
    assert load_config(env={"HEARTH_QUOTA": text}).quota == expected                            # environment
    assert load_config(env={}, flags={"quota": text}).quota == expected                         # a flag
    assert settings_from_seed({"storage": {"quota": text}}).get("quota", 0) == expected        # a seed
    if text.strip() != "0":
        # every byte setting reads the same forms (within its own range)
        assert load_config(env={"HEARTH_UPLOAD_LIMIT": text}).upload_limit == expected
        assert load_config(env={"HEARTH_DISK_RESERVE": text}).disk_reserve == expected
        if 4096 <= expected <= 64 << 20:
            assert load_config(env={"HEARTH_MAX_FRAME": text}).max_frame == expected
        if expected <= 1 << 30:
            assert load_config(env={"HEARTH_BLOCK_CACHE": text}).block_cache == expected


def test_plain_toml_integers_rates_and_auto(tmp_path):
    c = load_config(write(tmp_path, 'quota = 200000000000\nupload_limit = "2.5M/s"\nblock_cache = "32MiB"\n'
                                    'max_frame = 65536\ndisk_reserve = "auto"\n'), env={})
    assert (c.quota, c.upload_limit, c.block_cache, c.max_frame, c.disk_reserve) == (
        200 * 10**9, 2_500_000, 32 << 20, 65536, None)
    assert load_config(env={"HEARTH_UPLOAD_LIMIT": "500KiB/s"}).upload_limit == 512_000
    assert load_config(env={"HEARTH_DISK_RESERVE": "2G"}).disk_reserve == 2 * 10**9
    from edge.provisioning.seed import settings_from_seed      # a seed's upload limit is a rate as hearth.toml's is
    assert settings_from_seed({"limits": {"upload": "2.5M/s"}})["upload_limit"] == 2_500_000


@pytest.mark.parametrize("source, key, value, words", [
    ("file", "quota", '"lots"', "quota = 'lots' is not allowed; quota must be a number of bytes"),
    ("file", "quota", '"-5G"', "quota = '-5G' is not allowed"),
    ("file", "quota", "-1", "quota = -1 is not allowed"),
    ("file", "quota", "true", "quota = True is not allowed"),
    ("file", "quota", '"5 parsecs"', "(200G), KiB, MiB, GiB, TiB for powers of 1024 (500GiB)"),
    ("file", "upload_limit", '"fast"', "upload_limit = 'fast' is not allowed; upload_limit must be bytes per second"),
    ("file", "max_frame", '"1K"', "max_frame = '1K' is out of range; allowed 4KiB to 64MiB"),
    ("file", "block_cache", '"2GiB"', "block_cache = '2GiB' is out of range; allowed 0 to 1GiB"),
    ("file", "disk_reserve", '"some"', 'disk_reserve must be "auto" or a number of bytes'),
    ("env", "quota", "12Q", "environment HEARTH_QUOTA: quota = '12Q' is not allowed"),
    ("env", "upload_limit", "2.5M/h", "environment HEARTH_UPLOAD_LIMIT: upload_limit = '2.5M/h' is not allowed"),
    ("flag", "quota", "ten", "--quota: quota = 'ten' is not allowed; quota must be a number of bytes"),
])
def test_bad_sizes_name_the_key_the_value_and_the_forms(tmp_path, source, key, value, words):
    with pytest.raises(ConfigError) as err:
        if source == "file":
            load_config(write(tmp_path, f"{key} = {value}\n"), env={})
        elif source == "env":
            load_config(env={f"HEARTH_{key.upper()}": value})
        else:
            load_config(env={}, flags={key: value})
    print(err.value)
    assert words in str(err.value)
    if source == "file":
        assert str(tmp_path / "hearth.toml") in str(err.value)


def test_a_bad_seed_size_names_its_key():
    from edge.provisioning.seed import SeedError, settings_from_seed
    with pytest.raises(SeedError, match=r"storage.quota: '200 gigs' is not a size; use a number of bytes"):
        settings_from_seed({"storage": {"quota": "200 gigs"}})


def test_the_commented_file_shows_the_byte_defaults_in_units(tmp_path):
    text = commented_toml(Config())
    assert '# block_cache = "16MiB"' in text and '# max_frame = "2052KiB"' in text
    assert '# disk_reserve = "auto"' in text and "# quota = 0" in text and "# upload_limit = 0" in text
    # uncommented, every line reads back as the default it shows
    path = write(tmp_path, "\n".join(line[2:] if re.match(r"# [a-z_]+ = ", line) else line
                                      for line in text.splitlines()))
    assert load_config(path, env={}) == Config()
    shown = Config(quota=200 * 10**9, block_cache=3 << 20, upload_limit=2_500_000)
    assert '# quota = "200G"' in commented_toml(shown) and '# upload_limit = "2500K"' in commented_toml(shown)
