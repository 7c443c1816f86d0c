"""DRF's browsable API under the Content Security Policy (settings.CONTENT_SECURITY_POLICY).

Its templates style a few elements with style="" attributes: its pages allow inline style
attributes, never <style> elements or inline scripts. Kept apart from marketplace.api_pages,
which imports rest_framework.views, whose APIView reads DEFAULT_RENDERER_CLASSES (and so imports
this module) at import: together they would be a circular import.
"""

from __future__ import annotations

from typing import Any

from csp.constants import UNSAFE_INLINE
from rest_framework import renderers

STYLE_ATTRIBUTES_POLICY = {"style-src-attr": [UNSAFE_INLINE]}


class BrowsableAPIRenderer(renderers.BrowsableAPIRenderer):
    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> Any:
        response = (renderer_context or {}).get("response")
        if response is not None:
            # What csp.decorators.csp_update sets; the middleware reads it once the page is rendered.
            response._csp_update = STYLE_ATTRIBUTES_POLICY
        return super().render(data, accepted_media_type, renderer_context)
