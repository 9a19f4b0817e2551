"""Seeds made on a host: one for a household's node (`hearth provision seed`), checked as first boot checks it,
and written readable by its owner only (it may hold the Wi-Fi passphrase)."""

from edge.atomic import write_atomic
from edge.provisioning.seed import SeedError, parse_seed, render_seed, settings_from_seed
from edge.units import parse_rate, parse_size


def seed_of(name: str = "", quota: str = "", wifi_ssid: str = "", wifi_psk: str = "", wifi_country: str = "",
            upload: str = "") -> dict:
    """A seed's sections for these settings (empty ones left out); SeedError for a quota that is not a size or
    an upload limit that is not a rate."""
    seed = {}
    if name:
        seed["node"] = {"name": name}
    if quota:
        _check(parse_size, quota)
        seed["storage"] = {"quota": quota}
    if wifi_ssid:
        seed["network"] = {"wifi_ssid": wifi_ssid, **({"wifi_psk": wifi_psk} if wifi_psk else {}),
                           **({"wifi_country": wifi_country} if wifi_country else {})}
    if upload:
        _check(parse_rate, upload)
        seed["limits"] = {"upload": upload}
    return seed


def _check(parse, text: str) -> None:
    try:
        parse(text)
    except ValueError as exc:
        raise SeedError(str(exc)) from None


def write_seed(output: str, **settings) -> str:
    """Write the seed of seed_of(**settings) to output (0600), checked as first boot checks it; its text."""
    text = render_seed(seed_of(**settings))
    settings_from_seed(parse_seed(text, output))      # the sizes and rates too, as first boot reads them
    write_atomic(output, text.encode(), 0o600)
    return text
