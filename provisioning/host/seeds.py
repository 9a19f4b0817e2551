"""Seeds made on a host: one for a household's node (`hearth provision seed`), checked as first boot checks it,
and written readable by its owner only (it may hold the Wi-Fi passphrase)."""

from edge.atomic import write_atomic
from edge.provisioning.seed import SeedError, parse_seed, render_seed
from edge.units import parse_size


def seed_of(name: str = "", quota: str = "", wifi_ssid: str = "", wifi_psk: str = "", wifi_country: str = "",
            upload: str = "") -> dict:
    """A seed's sections for these settings (empty ones left out); SeedError for a quota or an upload limit
    that is not a size."""
    seed = {}
    if name:
        seed["node"] = {"name": name}
    if quota:
        _check_size(quota)
        seed["storage"] = {"quota": quota}
    if wifi_ssid:
        seed["network"] = {"wifi_ssid": wifi_ssid, **({"wifi_psk": wifi_psk} if wifi_psk else {}),
                           **({"wifi_country": wifi_country} if wifi_country else {})}
    if upload:
        _check_size(upload)
        seed["limits"] = {"upload": upload}
    return seed


def _check_size(text: str) -> None:
    try:
        parse_size(text)
    except ValueError as exc:
        raise SeedError(str(exc)) from None


def write_seed(output: str, **settings) -> str:
    """Write the seed of seed_of(**settings) to output (0600), checked as first boot checks it; its text."""
    text = render_seed(seed_of(**settings))
    parse_seed(text, output)
    write_atomic(output, text.encode(), 0o600)
    return text
