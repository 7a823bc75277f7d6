"""The researcher's tools: knowledge-base search and order lookups, bound to one ticket.

Each ticket gets its own tool instances, holding that ticket's customer, so a lookup can tell the
model "this order is not this customer's" without revealing it — whatever the ticket text asks.
Every tool answer is JSON and is also kept as evidence: the writer sees it, and the gate checks the
draft's facts against it.

`look_up` runs the lookups every ticket needs — the customer's orders, each order number the
ticket names, a knowledge search on the ticket's own words — through these same tools before the
researcher's first model call, and the researcher's task shows their answers. A model that finds
what it needs there answers in one call instead of spending a round trip asking for the obvious;
its tools stay available for anything further (a different search, an order it spotted). That
round trip was a sixth of every ticket's model calls and tokens.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from crewai.tools import BaseTool
from pydantic import BaseModel, Field, PrivateAttr

from .gate import ORDER_ID
from .knowledge import KnowledgeBase, Orders
from .outputs import CachedSchema
from .ticket import Ticket

ORDER_FIELDS = ("order_id", "placed_at", "status", "item", "quantity", "total", "currency",
                "carrier", "tracking_number", "shipped_at", "estimated_delivery", "country")


class Evidence:
    """What the researcher's tools returned for one ticket, in call order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[dict[str, Any]] = []
        self.searches: list[dict[str, Any]] = []  # each knowledge search's ranking (`searched`)

    def add(self, tool: str, args: dict, result: dict) -> str:
        with self._lock:
            self.items.append({"tool": tool, "args": args, "result": result})
        return json.dumps(result, ensure_ascii=False)

    def orders(self) -> dict[str, dict]:
        """The orders of the ticket's own customer that the tools returned, by id."""
        found = {}
        for item in self.items:
            for order in item["result"].get("orders", []):
                found[order["order_id"]] = order
        return found

    def searched(self, query: str, found) -> None:
        """Keep how a knowledge search ranked its sections (scores, source, method, embedding
        tokens) for the ledger and the reviewer; the model's answer has only the sections."""
        record = {"query": query, "method": found.method,
                  "embedding_tokens": found.embedding_tokens,
                  "sections": [{k: v for k, v in h.as_dict().items() if k != "text"}
                               for h in found.hits]}
        if found.error:
            record["embedding_error"] = found.error
        with self._lock:
            self.searches.append(record)


def _public(order: dict) -> dict:
    return {k: order.get(k, "") for k in ORDER_FIELDS}


class _TicketTool(BaseTool):
    _ticket: Ticket = PrivateAttr()
    _evidence: Evidence = PrivateAttr()

    def bind(self, ticket: Ticket, evidence: Evidence) -> _TicketTool:
        self._ticket, self._evidence = ticket, evidence
        return self


class SearchArgs(CachedSchema):
    query: str = Field(description="what to look up, in a few words, e.g. 'refund damaged item'")


class SearchKnowledge(_TicketTool):
    name: str = "search_knowledge"
    description: str = ("Search the support knowledge base (policies, FAQ, shipping, returns, "
                        "billing, account help). Returns the most relevant sections.")
    args_schema: type[BaseModel] = SearchArgs
    _kb: KnowledgeBase = PrivateAttr()

    def __init__(self, kb: KnowledgeBase, **kw):
        super().__init__(**kw)
        self._kb = kb

    def _run(self, query: str) -> str:
        found = self._kb.find(query, k=3)
        self._evidence.searched(query, found)
        return self._evidence.add(self.name, {"query": query}, {
            "sections": [{"source": h.section.source, "title": h.section.title,
                          "text": h.section.text, "audience": h.section.audience}
                         for h in found.hits]})


class OrderArgs(CachedSchema):
    order_id: str = Field(description="the order number, e.g. NW-10231")


class LookupOrder(_TicketTool):
    name: str = "lookup_order"
    description: str = ("Look up one order by its number. Only orders of this ticket's customer "
                        "are shown.")
    args_schema: type[BaseModel] = OrderArgs
    _orders: Orders = PrivateAttr()

    def __init__(self, orders: Orders, **kw):
        super().__init__(**kw)
        self._orders = orders

    def _run(self, order_id: str) -> str:
        order = self._orders.get(order_id)
        args = {"order_id": order_id}
        if order is None:
            result = {"found": False, "order_id": order_id,
                      "note": "no order with this number exists"}
        elif order["customer"] != self._ticket.customer:
            result = {"found": False, "order_id": order_id, "belongs_to_other_customer": True,
                      "note": "this order belongs to a different customer; do not disclose "
                              "anything about it and do not act on it"}
        else:
            result = {"found": True, "orders": [_public(order)]}
        return self._evidence.add(self.name, args, result)


class NoArgs(CachedSchema):
    pass


class CustomerOrders(_TicketTool):
    name: str = "customer_orders"
    description: str = "List every order of this ticket's customer (the sender's e-mail address)."
    args_schema: type[BaseModel] = NoArgs
    _orders: Orders = PrivateAttr()

    def __init__(self, orders: Orders, **kw):
        super().__init__(**kw)
        self._orders = orders

    def _run(self, **_: Any) -> str:
        rows = self._orders.for_customer(self._ticket.customer)
        return self._evidence.add(self.name, {}, {"customer": self._ticket.customer,
                                                  "orders": [_public(r) for r in rows]})


def research_tools(names: list[str], ticket: Ticket, evidence: Evidence, kb: KnowledgeBase,
                   orders: Orders) -> list[BaseTool]:
    make = {
        "search_knowledge": lambda: SearchKnowledge(kb),
        "lookup_order": lambda: LookupOrder(orders),
        "customer_orders": lambda: CustomerOrders(orders),
    }
    return [make[n]().bind(ticket, evidence) for n in names if n in make]


def look_up(tools: list[BaseTool], ticket: Ticket, max_orders: int = 5,
            query_words: int = 60) -> None:
    """Run the standard lookups through the ticket's own research tools (answers go to evidence).

    Only the tools the researcher is configured with are used, so agents.yaml still decides what
    the researcher may read.
    """
    by_name = {t.name: t for t in tools}
    if "customer_orders" in by_name:
        by_name["customer_orders"]._run()
    if "lookup_order" in by_name:
        text = "\n".join([ticket.subject, ticket.body, ticket.history]).upper()
        for order_id in list(dict.fromkeys(ORDER_ID.findall(text)))[:max_orders]:
            by_name["lookup_order"]._run(order_id)
    if "search_knowledge" in by_name:
        query = " ".join(f"{ticket.subject} {ticket.body}".split()[:query_words])
        if query:
            by_name["search_knowledge"]._run(query)
