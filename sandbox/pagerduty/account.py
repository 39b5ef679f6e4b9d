"""The account itself: its abilities (``/abilities``) and incident priorities
(``/priorities``), which the seed sets and nothing changes."""

from __future__ import annotations

from aiohttp import web

from .api import json_response, no_content, page, state_of
from .errors import PDError

routes = web.RouteTableDef()


@routes.get("/abilities")
async def list_abilities(request):
    return json_response({"abilities": list(state_of(request).abilities)})


@routes.get("/abilities/{id}")
async def get_ability(request):
    ability = request.match_info["id"]
    if ability not in state_of(request).abilities:
        raise PDError(402, 2014, "Missing Account Ability", [f"Account does not have the '{ability}' ability"])
    return no_content()


@routes.get("/priorities")
async def list_priorities(request):
    return page(request, "priorities", list(state_of(request).priorities.values()))
