"""The STAC Collection's license as STAC 1.1.0 asks: one SPDX identifier (checked against the SPDX list that
`packaging` ships), or `other` with a link to the license text; either way a `license` link to the text."""

from __future__ import annotations

from typing import Any

from tessera_pipeline.errors import PublishError

#: The value STAC 1.1.0 takes for a license that has no SPDX identifier (it deprecates `proprietary` and `various`).
OTHER = "other"
#: Where the SPDX list publishes the text of a license, by identifier.
SPDX_TEXT = "https://spdx.org/licenses/{id}.html"


def license_fields(license: str, url: str | None = None) -> tuple[str, dict[str, Any]]:
    """The Collection's `license` value and its `license` link (to `url`, else to the SPDX page of the identifier)."""
    from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression

    if license.strip().lower() == OTHER:
        if not url:
            raise PublishError("license `other` needs the URL of the license text (or give an SPDX identifier)")
        return OTHER, {"rel": "license", "href": url, "title": "License"}
    try:
        spdx = canonicalize_license_expression(license.strip())
    except InvalidLicenseExpression as exc:
        raise PublishError(f"license {license!r} is not an SPDX license identifier ({exc}); use one such as "
                           f"CC-BY-4.0, or `other` with the URL of the license text") from exc
    if " " in spdx:
        raise PublishError(f"license {license!r} is an SPDX expression: STAC 1.1.0 takes one identifier; use `other` "
                           f"with the URL of a text that states the terms")
    return spdx, {"rel": "license", "href": url or SPDX_TEXT.format(id=spdx), "type": "text/html", "title": spdx}
