"""The bundled calibration text: a few pages of plain English in several registers (a story, an
explanation, instructions, a letter, a dialogue, a little code and numbers), written for this project
and distributed under the project's licence. importance.py runs the full-precision model over it to
measure how strongly each input channel of each weight is driven. It shares no passage with the
evaluation text of the benchmarks (benchmarks/data/gpl-3.0.txt).
"""

TEXT = """\
The lighthouse keeper woke before dawn, as she had every morning for eleven years. Rain tapped on the
small window above her bed, and somewhere below the cliff the sea was turning over stones with a sound
like slow applause. She dressed in the dark, climbed the spiral stairs with a cup of tea in one hand,
and checked the lamp. Everything was in order. Far out on the water, a fishing boat was heading home,
its single light rising and falling with the swell. She wrote the time in the logbook, then the wind
direction, then, after a moment's thought, a short line about the colour of the sky: grey at the edges,
almost silver in the middle, as if someone had polished it overnight.

Why does the sky look blue on a clear day? Sunlight contains every colour of the visible spectrum. When
it passes through the atmosphere, it meets molecules of nitrogen and oxygen that are much smaller than
the wavelength of the light. These molecules scatter short wavelengths far more strongly than long
ones, so blue light is redirected in every direction while red and yellow light travel on more or less
undisturbed. Wherever you look, some of that scattered blue light reaches your eyes. At sunset the light
crosses a much thicker layer of air, most of the blue is scattered away before it arrives, and the sky
near the horizon turns orange and red.

To bake a simple loaf of bread, you need 500 grams of flour, 10 grams of salt, 7 grams of dried yeast
and about 350 millilitres of warm water. Mix the dry ingredients in a large bowl, pour in the water and
stir until a rough dough forms. Knead it on a floured surface for ten minutes, until it feels smooth and
springs back when pressed. Cover the bowl and leave it somewhere warm for an hour, or until the dough has
doubled in size. Shape it, let it rise for another forty minutes, then bake at 220 degrees Celsius for
thirty to thirty-five minutes. The loaf is done when it sounds hollow if you tap the bottom.

Dear Mr. Alvarez,
Thank you for your letter of 14 March and for the samples, which arrived in good condition. Our team has
tested the three fabrics you sent. The blue cotton passed every test; the linen shrank by almost four
percent after washing, which is more than we can accept; the wool blend has not yet been evaluated
because the machine we need is being repaired. We expect to send you our full results by the end of
next month. In the meantime, could you tell us whether the cotton is available in larger quantities,
and at what price? We look forward to hearing from you.
Yours sincerely,
Hannah Kowalski, Purchasing Department

"Are you sure this is the right train?" asked Tom, looking at the board for the third time.
"Platform six, the 9:42 to Edinburgh," said his sister. "It says so right there."
"It said platform four ten minutes ago."
"Then it changed. Trains do that. Come on, or we'll miss it."
They ran down the stairs, through the tunnel and up again, and reached the doors just as the whistle
blew. Tom sat down, out of breath, and laughed. "Next time," he said, "we leave an hour early."

Here is a short Python function that counts how often each word appears in a text:

def word_counts(text):
    counts = {}
    for word in text.lower().split():
        word = word.strip(".,;:!?\\"'()")
        if word:
            counts[word] = counts.get(word, 0) + 1
    return counts

Calling word_counts("The cat saw the dog.") returns {'the': 2, 'cat': 1, 'saw': 1, 'dog': 1}.

The population of the town grew from 12,400 in 1950 to 31,750 in 2000, an increase of about 156
percent. Most of the growth came between 1960 and 1975, when a new railway line and two factories
brought thousands of workers and their families. Since 2000 the number has stayed nearly constant,
although the average age of the residents has risen from 34 to 43 years.

In the early history of astronomy, people noticed that a few bright points of light moved slowly
against the background of fixed stars. The Greeks called them planets, meaning wanderers. Careful
records of their positions, kept over many centuries, eventually showed that their paths could be
explained far more simply if the Earth and the planets all travelled around the Sun. The idea met
strong resistance at first, but better telescopes and more precise measurements made it impossible
to ignore.

Question: A shop sells pencils at 3 for 45 cents. How much do 12 pencils cost?
Answer: Twelve pencils are four groups of three, so they cost 4 x 45 = 180 cents, or $1.80.

The old bridge had stood for almost two hundred years. Carts, horses, cars and finally heavy lorries
had crossed it, and each generation had patched the stones a little differently. When the engineers
came to inspect it, they found that the foundations were still sound; it was only the road surface,
laid in a hurry after the war, that had begun to crack. They recommended that it be repaired rather
than replaced, and the village, which had feared the worst, held a small celebration on the riverbank.

Good software is written for people as much as for machines. Choose names that say what a thing is,
keep functions short enough to understand at a glance, and write tests that would fail if the code
were wrong. When something breaks, read the error message carefully before changing anything: it
usually says more than it seems to at first. And when you fix a bug, ask yourself why it was possible
in the first place, so that the next one is less likely.
"""
