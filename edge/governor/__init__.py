"""The governor: what Hearth may take of the household's link, disk and box (caps by link class and hour, the
back-off when the household uses the uplink, the SD-wear budget, the transcode memory budget)."""
