"""Makes the ticket-routing evaluation set: support tickets routed to five made-up queues.

Why this task: the queue names (kestrel, juniper, basalt, marlin, tundra) say nothing about what
they hold, so a base model can only guess (about one in five); a model fine-tuned on the train
split learns the routing. The train split is chat-format for `llmos tune`, asked exactly as
`llmos eval --task classify` asks (userland/evaluation.classify_messages); the held-out split is
classify JSONL with its label header. Seeded: running it again writes the same files.

    python data/eval/make_tickets.py      # writes tickets-train.jsonl and tickets-heldout.jsonl here
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from llmos.userland.evaluation import classify_messages

QUEUES = {
    "kestrel": [   # billing: charges, refunds, invoices
        "I was charged twice for my {plan} subscription this month, please refund one of them.",
        "My invoice for {month} shows {amount} but I expected a lower amount.",
        "Can I get a refund for the {product} I returned last week?",
        "The payment for order {order} went through but my card was billed {amount} extra.",
        "Why did my {plan} plan price go up to {amount}?",
        "Please send me a VAT invoice for order {order}.",
        "I see an unknown charge of {amount} from you on my bank statement.",
        "My refund for {product} still has not arrived after two weeks.",
        "How do I change the credit card you bill for my {plan} plan?",
        "I was billed for {plan} after I downgraded in {month}.",
    ],
    "juniper": [   # account access: login, password, 2FA
        "I cannot log in, it says my password is wrong even after resetting it.",
        "The two-factor code never arrives on my phone, I am locked out.",
        "My account {user} was locked after too many login attempts.",
        "The password reset email for {user} never comes.",
        "I changed phones and lost my authenticator app, how do I sign in now?",
        "Someone else may have logged into my account {user}, please secure it.",
        "Login keeps looping back to the sign-in page on {device}.",
        "I forgot which email I used for my account, my username is {user}.",
        "How do I turn on two-step verification for {user}?",
        "The sign-in link you emailed me says it has expired.",
    ],
    "basalt": [   # shipping: delivery, tracking, addresses
        "My package for order {order} has not arrived yet, it was due on {day}.",
        "The tracking number for order {order} shows no updates for five days.",
        "Can I change the delivery address for order {order} to {city}?",
        "The courier left my {product} at the wrong house.",
        "Do you ship the {product} to {city}?",
        "My parcel arrived with the box crushed and the {product} inside is damaged.",
        "Order {order} says delivered but nothing came to my door in {city}.",
        "How long does express shipping to {city} take?",
        "Only half of order {order} arrived, the {product} is missing.",
        "Can I pick up order {order} at a store in {city} instead of delivery?",
    ],
    "marlin": [   # app bugs: crashes, errors
        "The app crashes every time I open the settings page on {device}.",
        "I get error {code} when I try to upload a photo.",
        "The {feature} button does nothing since the last update on {device}.",
        "The screen goes blank after I tap {feature} on {device}.",
        "Sync fails with error {code} on my {device}.",
        "Notifications stopped working after updating the app on {device}.",
        "The app freezes when I export a report, error {code} appears.",
        "Dark mode makes the {feature} text invisible on {device}.",
        "Search returns nothing even for items I know exist, error {code}.",
        "The {feature} page keeps spinning and never loads on {device}.",
    ],
    "tundra": [   # cancellations: closing accounts, ending subscriptions
        "Please cancel my {plan} subscription at the end of this month.",
        "I want to close my account {user} and delete my data.",
        "How do I stop the automatic renewal of my {plan} plan?",
        "Cancel order {order}, I no longer need the {product}.",
        "I would like to end my membership, I am moving to {city}.",
        "Please terminate the {plan} trial before it starts charging me.",
        "Delete my account {user}, I do not use it anymore.",
        "I want to cancel the {product} preorder {order}.",
        "Stop my {plan} subscription immediately please.",
        "How can I permanently remove my account {user}?",
    ],
}

FILLERS = {
    "plan": ["Basic", "Plus", "Pro", "Family", "Team", "Student"],
    "month": ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"],
    "amount": ["$12.99", "$49.00", "$7.50", "$120.00", "$3.99", "$89.95", "$15.00", "$240.00"],
    "product": ["headphones", "blender", "desk lamp", "phone case", "backpack", "coffee grinder", "keyboard",
                "yoga mat", "smartwatch", "kettle"],
    "order": [f"#{n}" for n in (10482, 22931, 30877, 41250, 55013, 60418, 71134, 80922, 93306, 17745)],
    "user": ["maria.l", "jchen88", "sam_k", "olivia.r", "dev_tom", "nina2020", "pkumar", "lee.w"],
    "device": ["my iPhone", "Android", "my iPad", "the web app", "my Pixel", "Windows", "my Mac"],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the 12th", "last weekend"],
    "city": ["Lyon", "Denver", "Osaka", "Leeds", "Austin", "Porto", "Calgary", "Dublin"],
    "code": ["E1042", "503", "ERR_SYNC_7", "0x80070005", "E-221", "timeout 408"],
    "feature": ["Save", "Share", "Export", "Calendar", "Upload", "Profile"],
}

OPENINGS = ["", "Hi, ", "Hello, ", "Hi team, ", "Good morning. ", "Urgent: ", "Hey there, "]
CLOSINGS = ["", " Thanks.", " Thank you!", " Please help.", " Regards, {name}.", " Cheers, {name}"]
NAMES = ["Ana", "Ben", "Chloe", "Dmitri", "Emeka", "Farah", "Greg", "Hana"]
TRAIN_PER_QUEUE, HELDOUT_PER_QUEUE = 60, 20


def tickets(rng: random.Random, queue: str, count: int, taken: set[str]) -> list[str]:
    """count different tickets for queue that are not in taken (which they join)."""
    out = []
    while len(out) < count:
        template = rng.choice(OPENINGS) + rng.choice(QUEUES[queue]) + rng.choice(CLOSINGS)
        text = template.format(name=rng.choice(NAMES), **{k: rng.choice(v) for k, v in FILLERS.items()})
        if text not in taken:
            taken.add(text)
            out.append(text)
    return out


def main() -> None:
    rng = random.Random(12)
    labels = list(QUEUES)
    taken: set[str] = set()
    heldout = [(t, q) for q in labels for t in tickets(rng, q, HELDOUT_PER_QUEUE, taken)]
    train = [(t, q) for q in labels for t in tickets(rng, q, TRAIN_PER_QUEUE, taken)]
    rng.shuffle(heldout)
    rng.shuffle(train)
    here = Path(__file__).parent
    with open(here / "tickets-train.jsonl", "w") as f:
        for text, queue in train:
            messages = classify_messages(labels, text) + [{"role": "assistant", "content": queue}]
            f.write(json.dumps({"messages": messages}) + "\n")
    with open(here / "tickets-heldout.jsonl", "w") as f:
        f.write(json.dumps({"labels": labels}) + "\n")
        for text, queue in heldout:
            f.write(json.dumps({"text": text, "label": queue}) + "\n")


if __name__ == "__main__":
    main()
