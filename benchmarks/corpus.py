"""Varied natural English prose for benchmark prompts: paragraphs on unrelated topics.

Prompts are cut from random concatenations of these, so every prompt is different text and
no two runs with the same seed differ. Plain ASCII, so every tokenizer round-trips it exactly.
"""

PARAGRAPHS = [
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a can of oil and a rag. "
    "For forty years he had trimmed the wick and polished the great lens until it threw a beam twenty miles "
    "out to sea. Ships he would never meet steered by his light, and he liked it that way.",

    "To make a good loaf of bread you need only flour, water, salt and time. Mix the dough until it is shaggy, "
    "let it rest for half an hour, then fold it over itself every so often as it rises. A slow overnight "
    "proof in a cool kitchen gives the crumb a deeper flavour than any shortcut can.",

    "Glaciers move more slowly than almost anything we can see with our own eyes, yet they carve valleys, "
    "carry boulders the size of houses across whole countries, and leave behind lakes when they retreat. "
    "Much of northern Europe and North America was shaped by ice that melted only ten thousand years ago.",

    "The committee met on Tuesday to discuss the budget for the new library wing. After a long debate about "
    "shelving, lighting and the cost of a second elevator, the members agreed to postpone the vote until the "
    "architect could present a revised plan with fewer windows on the western side.",

    "Honeybees communicate the location of flowers through a waggle dance. The angle of the dance relative to "
    "vertical tells the other bees the direction of the food compared with the sun, and the length of the "
    "waggle run tells them how far away it is. A colony can redirect its foragers within minutes.",

    "When the train finally pulled into the station it was nearly midnight, and the platform was empty except "
    "for a man selling roasted chestnuts from a cart. She bought a paper cone of them, warmed her hands, and "
    "set off along the river toward the old town, where her aunt had promised to leave a light on.",

    "A compiler translates source code written by people into instructions a processor can execute. Modern "
    "compilers perform dozens of optimization passes, removing dead code, unrolling loops and choosing which "
    "values to keep in registers, so that the program runs faster without changing what it computes.",

    "The museum's newest exhibit features textiles from three centuries of coastal trade. Visitors can see "
    "indigo cloth dyed in small workshops, silk woven for wedding ceremonies, and cotton sailcloth patched "
    "many times over by sailors who could not afford to replace it.",

    "Running a marathon is less about speed than about patience. Most first-time runners start too fast, "
    "carried along by the crowd and the excitement, and pay for it in the last ten kilometres. Experienced "
    "runners hold back early, drink at every station, and save something for the final climb.",

    "In the spring the hillside above the village turns yellow with wild mustard, and the farmers bring their "
    "goats up from the valley to graze. Children follow the herds with sticks and dogs, and in the evenings "
    "the sound of bells drifts down over the rooftops as the animals settle for the night.",

    "Photosynthesis converts light energy into chemical energy stored in sugar. Inside the chloroplasts of a "
    "leaf, pigments absorb sunlight and use it to split water, releasing oxygen as a by-product. The energy "
    "captured this way ultimately feeds nearly every living thing on the planet.",

    "The detective examined the broken window carefully. The glass had fallen inward, onto the carpet, which "
    "meant the pane had been struck from outside. But there were no footprints in the soft earth of the flower "
    "bed beneath it, and that, she thought, was the most interesting fact of all.",

    "Good documentation explains why a system was built the way it was, not only how to use it. A new engineer "
    "who understands the reasons behind a design can extend it safely, while one who only knows the commands "
    "will eventually break something that seemed unimportant.",

    "The old market sells everything from spices and dried fish to radios and bicycle parts. Traders arrive "
    "before dawn to claim the best spots near the entrance, and by nine in the morning the narrow lanes are so "
    "crowded that it can take half an hour to walk from one end to the other.",

    "Volcanic soils are among the most fertile in the world, which is why people have farmed the slopes of "
    "active volcanoes for thousands of years despite the danger. Ash breaks down quickly into minerals that "
    "plants need, and the terraced fields around many volcanoes produce coffee, grapes and rice.",

    "He had never been good at chess, but his grandfather insisted on a game every Sunday afternoon. Over the "
    "years he learned to think several moves ahead, to protect his king, and above all to lose gracefully, "
    "which his grandfather said was the most useful skill the game could teach.",

    "The city council approved a plan to plant ten thousand trees along its busiest streets over the next five "
    "years. Supporters say the trees will lower summer temperatures, reduce flooding after storms and make "
    "walking more pleasant, while critics worry about the cost of maintaining them.",

    "Sound travels about four times faster in water than in air, which is why whales can hear one another "
    "across hundreds of kilometres of ocean. Some of their songs change slowly from year to year, spreading "
    "from one population to another like a popular tune.",

    "Before the invention of the printing press, books were copied by hand, usually by monks working in "
    "quiet rooms lit by candles and windows. A single bible could take a year or more to finish, and the "
    "finest manuscripts were decorated with gold leaf and brilliant painted initials.",

    "The recipe calls for two cups of rice, rinsed until the water runs clear, a knob of butter, a chopped "
    "onion and four cups of hot stock. Stir constantly, add the stock a ladle at a time, and finish with grated "
    "cheese and a squeeze of lemon just before serving.",

    "Our sun is an ordinary star, neither especially large nor especially small, about halfway through its "
    "life. In roughly five billion years it will swell into a red giant, swallowing the inner planets, before "
    "shrinking into a white dwarf that will cool slowly for longer than the universe has existed.",

    "The team had three days to repair the bridge before the harvest trucks needed to cross it. They worked in "
    "shifts through the night under floodlights, replacing rotten beams and bolting new steel plates to the "
    "supports, and finished with six hours to spare.",

    "Learning a second language as an adult is hard but far from hopeless. Regular practice matters more than "
    "talent: twenty minutes of conversation every day does more than a long weekend course once a year, and "
    "making mistakes out loud is the fastest way to stop making them.",

    "The storm arrived faster than the forecast had promised. Within an hour the sky over the harbour turned "
    "the colour of slate, the fishing boats raced back to their moorings, and rain swept across the square in "
    "sheets so heavy that the cafe owners gave up and pulled in their tables.",

    "Databases keep a log of every change before applying it, so that after a crash they can replay the log "
    "and restore a consistent state. This simple idea, called write-ahead logging, lets a system promise that "
    "once it says a transaction is committed, the data will survive a power failure.",

    "Wolves were reintroduced to the park after an absence of seventy years, and the effects spread through "
    "the whole landscape. Elk began avoiding the river valleys, willows and aspens grew back along the banks, "
    "and beavers returned to build dams in streams they had long abandoned.",

    "The violinist tuned her instrument one last time and looked out at the audience. The hall was full, the "
    "lights were low, and somewhere in the third row her old teacher sat with his hands folded. She lifted the "
    "bow, took a breath, and began the slow opening bars of the sonata.",

    "Tides are caused mainly by the pull of the moon on the oceans, with a smaller contribution from the sun. "
    "When the sun and moon line up, their effects combine to produce especially high and low tides, called "
    "spring tides, which have nothing to do with the season of the same name.",

    "The village school had only two classrooms and one teacher for the older children, but its students were "
    "known throughout the district for their handwriting and their arithmetic. Every morning began with "
    "twenty minutes of mental sums, and nobody was allowed to use a pencil.",

    "Coffee was first cultivated in the highlands of Ethiopia and Yemen, and spread through the Ottoman world "
    "before reaching Europe in the seventeenth century. The first coffee houses in London were called penny "
    "universities, because for the price of a cup anyone could join the conversation.",

    "The hikers reached the ridge just as the clouds lifted, and for a few minutes the whole range lay spread "
    "out before them: dark forests in the valleys, bare grey rock above, and snow on the highest peaks glowing "
    "pink in the last of the evening light.",

    "A good manager spends more time listening than talking. She learns what each person on the team is good "
    "at and what they want to learn, removes obstacles before they become crises, and takes the blame when "
    "things go wrong while giving the credit away when they go right.",

    "The river changes course slowly over the centuries, cutting into the outside of each bend and depositing "
    "sand on the inside. Old maps of the valley show the town on the eastern bank; today the same streets stand "
    "on the western side, and nobody living remembers the move.",

    "Vaccines train the immune system to recognise a germ without the risk of the disease itself. Some use a "
    "weakened or inactivated form of the virus, others only a single protein from its surface, but all of them "
    "teach the body to respond quickly if the real thing ever arrives.",

    "The shop on the corner repaired watches, clocks and, if you asked nicely, music boxes. Its owner worked "
    "behind a counter cluttered with tiny screwdrivers and springs, a magnifying glass screwed into one eye, "
    "and he hummed along to the radio while he worked.",

    "Networks split messages into small packets that travel independently and may arrive out of order. The "
    "receiving computer reassembles them, asks again for any that went missing, and delivers the complete "
    "message to the program waiting for it, which never sees the chaos underneath.",

    "At the edge of the desert the road simply ends, and a line of painted stones marks the track that "
    "continues across the sand. Travellers are advised to carry twice as much water as they expect to need "
    "and to tell someone in the last town when they plan to arrive.",

    "The novel follows three generations of a family who run a small hotel by the sea. Each section is told by "
    "a different narrator, and only at the end does the reader understand how a single summer afternoon, "
    "decades earlier, shaped every choice the family made afterward.",

    "Mathematicians proved centuries ago that there are infinitely many prime numbers, but questions about "
    "how they are spaced remain open. The twin prime conjecture, which says there are infinitely many pairs "
    "of primes that differ by two, has resisted every attempt at a proof.",

    "The festival lasts a week and fills every street in the old quarter. There are parades in the morning, "
    "concerts in the squares at night, and at the end a procession of lanterns carried down to the water, "
    "where they are set afloat and drift slowly out into the bay.",
]
