"""Quickstart: concurrent steps, a router, and a failure reported clearly."""

from stageline import TERMINATE, Pipeline, PipelineFactory, Stage, Step


def price(state, ctx):
    return {"order": {"total": sum(i["price"] * i["qty"] for i in state["items"])}}


def stock(state, ctx):
    return {"order": {"in_stock": all(i["qty"] <= 5 for i in state["items"])}}


def route(state, results):  # after the stage's commit: advance, jump, stop or pause
    return "ship" if state["order"]["in_stock"] else "backorder"


def ship(state, ctx):
    if not state.get("address"):
        raise ValueError("no address")
    return {"shipped": True}


def backorder(state, ctx):
    return {"backordered": True}


checkout = Pipeline(
    "checkout",
    [
        Stage("check", order=1, steps=[Step("price", price), Step("stock", stock)], router=route),
        Stage(
            "ship",
            order=2,
            label="Ship",
            steps=[Step("label", ship, retries=1)],
            router=lambda state, results: TERMINATE,
        ),
        Stage("backorder", order=3, steps=[Step("wait", backorder)]),
    ],
)

factory = PipelineFactory(checkout, initial_state={"items": [{"price": 30, "qty": 2}]})
run = factory.prepare()
run.on("stage:success", lambda e: print(f"  stage {e.stage_id} committed -> {e.routing}"))
result = run.run()
print(result.status, result.state["order"])  # failed {'total': 60, 'in_stock': True}
print(result.error)  # 1 step(s) failed in Ship:ship: label: ...
