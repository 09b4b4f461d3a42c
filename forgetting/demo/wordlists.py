"""The Dutch and German word lists and sentence templates of the demo corpus (`forgetting/demo/synth.py` composes them).

Each language is a `Lexicon`: nouns by grammatical gender, determiners as tables of (article, adjective
ending) by case and gender, adjectives as (predicative form, attributive stem), verbs in the third person
singular, and weighted templates whose `{slots}` the composer fills. The lists lean on each language's own
letters (Dutch é ë ï ij, German ä ö ü ß) so that a model trained on the corpus must learn them; every word
stays inside the `sample.<lang>.alphabet` of params.yaml once normalised.
"""

from __future__ import annotations

from dataclasses import dataclass

CASES = ("nom", "acc", "dat")


@dataclass(frozen=True)
class Determiner:
    """A determiner kind (definite, indefinite, ...): `forms[(case, gender)]` is (article, adjective ending).

    An empty ending means the adjective takes its predicative form (Dutch `een groot huis`).
    """

    weight: float
    forms: dict[tuple[str, str], tuple[str, str]]


@dataclass(frozen=True)
class Lexicon:
    """Everything the composer needs for one language."""

    nouns: dict[str, tuple[str, ...]]  # gender -> nouns
    determiners: tuple[Determiner, ...]
    adjectives: tuple[tuple[str, str], ...]  # (predicative, attributive stem): ("groot", "grot") + "e"
    transitive_verbs: tuple[str, ...]
    intransitive_verbs: tuple[str, ...]
    adverbs: tuple[str, ...]
    degrees: tuple[str, ...]  # words before a predicative adjective: "sehr", "niet"
    question_words: tuple[str, ...]
    prepositions: tuple[str, ...]  # take the dative in German
    contractions: dict[str, str]  # "in dem" -> "im"
    places: tuple[str, ...]
    place_prepositions: tuple[str, ...]
    names: tuple[str, ...]
    numbers: tuple[str, ...]
    plurals: tuple[str, ...]
    interjections: tuple[str, ...]
    day_parts: tuple[str, ...]
    templates: tuple[tuple[float, str], ...]  # (weight, template)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _determiner(weight: float, genders: str, table: dict[str, str]) -> Determiner:
    """Parse `{case: "article:ending ..."}` with one entry per gender in `genders` order ("m f n")."""
    forms = {}
    for case in CASES:
        for gender, entry in zip(genders.split(), table.get(case, table.get("all", "")).split(), strict=True):
            article, ending = entry.split(":")
            forms[(case, gender)] = (article, ending)
    return Determiner(weight, forms)


def _dutch_adjectives(text: str) -> tuple[tuple[str, str], ...]:
    """Dutch adjectives written as `base/inflected`; the attributive stem is the inflected form minus its -e."""
    pairs = (entry.split("/") for entry in text.split())
    return tuple((base, inflected.removesuffix("e")) for base, inflected in pairs)


def _german_adjectives(text: str) -> tuple[tuple[str, str], ...]:
    """German adjectives as `predicative` or `predicative/stem` where the stem differs (`dunkel/dunkl`)."""
    pairs = (entry.split("/") if "/" in entry else (entry, entry) for entry in text.split())
    return tuple((pred, stem) for pred, stem in pairs)


DUTCH = Lexicon(
    nouns={
        "c": _words("""
            hond kat tafel boom vogel kaas appel stoel sleutel bakker leraar rivier berg tuin lepel taart trein
            kast koffer brief bal hoed jas vos kikker pompoen burgemeester koning spiegel beker pan vrouw straat
            bloem deur keuken brug lamp tas klok stad school muis koe gans molen peer soep wolk krant fluit
            gitaar bril kerk hut ruïne reünie poëzie zee knie ijsbeer fiets tijger egoïst scène wijn tijd prijs
            lijst rijst dijk wijk pijp vijver bij buurman zanger dokter paté coupé rosé logé piano
        """),
        "n": _words("""
            kind huis boek meisje brood raam paard schip glas schilderij sprookje ontbijt dorp varken schaap ei
            kantoor schrift mes kussen cadeau vliegtuig broodje café ijs ijsje museum konijn strand bos
            feest liedje spel idee comité menu koekje hotel park eiland concert theater kasteel
        """),
    },
    determiners=(
        _determiner(5, "c n", {"all": "de:e het:e"}),
        _determiner(3, "c n", {"all": "een:e een:"}),
        _determiner(1, "c n", {"all": "mijn:e mijn:e"}),
        _determiner(1, "c n", {"all": "deze:e dit:e"}),
        _determiner(1, "c n", {"all": "onze:e ons:e"}),
        _determiner(0.4, "c n", {"all": "zo'n:e zo'n:"}),
    ),
    adjectives=_dutch_adjectives("""
        groot/grote klein/kleine oud/oude jong/jonge mooi/mooie lief/lieve wit/witte rood/rode blauw/blauwe
        groen/groene zwart/zwarte geel/gele dik/dikke dun/dunne warm/warme koud/koude snel/snelle stil/stille
        blij/blije vrij/vrije rijk/rijke fijn/fijne wijs/wijze vies/vieze naïef/naïeve lui/luie gek/gekke
        zoet/zoete zuur/zure zwaar/zware donker/donkere nieuw/nieuwe leuk/leuke vrolijk/vrolijke hoog/hoge
        nat/natte droog/droge slim/slimme dapper/dappere eenzaam/eenzame beroemd/beroemde financieel/financiële
        officieel/officiële efficiënt/efficiënte geïnteresseerd/geïnteresseerde geëmotioneerd/geëmotioneerde
        creatief/creatieve lekker/lekkere prachtig/prachtige gezellig/gezellige rustig/rustige ideaal/ideale
        oranje/oranje
    """),
    transitive_verbs=_words("""
        ziet koopt vindt hoort zoekt bouwt leest drinkt eet wast draagt opent tekent mist kent volgt vangt
        verkoopt schildert bezoekt repareert brengt haalt pakt kiest telt ruikt proeft verstopt knuffelt
        fotografeert negeert ontdekt bewondert beëindigt creëert ruïneert coördineert wijst bekijkt
    """),
    intransitive_verbs=_words("""
        slaapt loopt lacht wacht zwemt droomt valt danst zingt huilt fietst werkt rust speelt fluit springt
        rent glimlacht schreeuwt kookt schrijft rijdt vliegt zit staat ligt blijft verdwijnt verschijnt juicht
        zucht reageert wijkt kijkt
    """),
    adverbs=_words("""
        vandaag morgen vaak soms altijd nooit snel langzaam graag weer buiten vroeg laat zachtjes misschien
        eindelijk overal hier daar binnen straks meteen gelukkig
    """),
    degrees=_words("heel erg best echt niet altijd nogal zeer"),
    question_words=_words("waarom wanneer waar hoe"),
    prepositions=_words("met bij naast onder achter voor in op over tegen zonder"),
    contractions={},
    places=_words("""
        België Italië Australië Servië Kroatië Roemenië Indonesië Israël Nederland Duitsland Parijs Brussel
        Gent Leuven Zeeland Limburg Utrecht Zürich Friesland Rijswijk Nijmegen Rijnsburg
    """),
    place_prepositions=_words("in naar uit bij"),
    names=_words("""
        Zoë Daniël Noël Michaël Raphaël Joëlle Chloë Ismaël Thijs Sjoerd Anouk Bram Femke Lotte Ruben Jeroen
        Wouter Ilse Sanne Gijs Fleur Koen Marijke Stijn Rik Eline Mees Rijk Lieke Dirk René André
    """),
    numbers=_words("twee drie vier vijf zes tien veel geen"),
    plurals=_words("""
        foto's auto's menu's baby's oma's opa's radio's video's kano's pyjama's paraplu's ideeën knieën zeeën
        ruïnes appels boeken ijsjes bijen
    """),
    interjections=_words("hallo bedankt dag hé prima zeker nee ja jammer gezellig"),
    day_parts=_words("morgens middags avonds nachts"),
    templates=(
        (10, "{np_nom} {vi}."),
        (10, "{np_nom} {vt} {np_acc}."),
        (8, "{np_nom} {vi} {adv}."),
        (10, "{np_nom} {vi} {pp}."),
        (6, "{np_nom} {vt} {np_acc} {pp}."),
        (8, "{adv} {vi} {np_nom}."),
        (6, "{adv} {vt} {np_nom} {np_acc}."),
        (6, "{np_nom} is {adj}."),
        (4, "{np_nom} is {degree} {adj}."),
        (5, "{vt} {np_nom} {np_acc}?"),
        (4, "{vi} {np_nom} {pp}?"),
        (4, "{wh} {vi} {np_nom}?"),
        (3, "Ja, {np_nom} {vi}."),
        (3, "Nee, {np_nom} {vi} niet."),
        (3, "{name}, {np_nom} {vi} {adv}."),
        (4, "{np_nom} {vi}, maar {np_nom} {vi}."),
        (3, "{np_nom} {vi}, omdat {np_nom} {adj} is."),
        (3, "{name} {vt} {num} {plural}."),
        (1, 'Het woord "{noun}" is {adj}.'),
        (1, '{name} zegt "{interj}".'),
        (1, '"{interj}", zegt {np_nom}.'),
        (1, '{np_nom} heet "{name}".'),
        (1, "{name} {vi} 's {daypart}."),
    ),
)

GERMAN = Lexicon(
    nouns={
        "m": _words("""
            Hund Tisch Baum Vogel Käse Apfel Stuhl Schlüssel Bäcker Lehrer Fluss Berg Garten Löffel Kuchen Zug
            Wagen Schrank Koffer Brief Ball Hut Mantel Fuchs Frosch Kürbis Bürgermeister König Spiegel Becher
            Topf Kühlschrank Kater Sänger Wald Teppich Hügel Fuß Strauß Großvater Käfer Müller
            Fußball Rücken Gärtner
        """),
        "f": _words("""
            Katze Frau Straße Blume Tür Küche Brücke Lampe Tasche Uhr Stadt Schule Maus Kuh Gans Mühle Ärztin
            Lehrerin Birne Suppe Wolke Zeitung Flöte Gitarre Brille Jacke Insel Kirche Wiese Hütte Bühne Nuss
            Soße Großmutter Säge Größe Übung Möwe
        """),
        "n": _words("""
            Kind Haus Buch Mädchen Brot Fenster Auto Fahrrad Pferd Schiff Glas Bild Märchen Geschäft Gemüse
            Frühstück Zimmer Dorf Schwein Schaf Ei Boot Büro Heft Messer Kissen Geschenk Klavier Flugzeug
            Eichhörnchen Brötchen Floß Schloss Öl Gefäß Würstchen Häuschen Stück
        """),
    },
    determiners=(
        _determiner(5, "m f n", {"nom": "der:e die:e das:e", "acc": "den:en die:e das:e", "dat": "dem:en der:en dem:en"}),
        _determiner(3, "m f n", {"nom": "ein:er eine:e ein:es", "acc": "einen:en eine:e ein:es",
                                 "dat": "einem:en einer:en einem:en"}),
        _determiner(1, "m f n", {"nom": "mein:er meine:e mein:es", "acc": "meinen:en meine:e mein:es",
                                 "dat": "meinem:en meiner:en meinem:en"}),
        _determiner(1, "m f n", {"nom": "dieser:e diese:e dieses:e", "acc": "diesen:en diese:e dieses:e",
                                 "dat": "diesem:en dieser:en diesem:en"}),
        _determiner(0.5, "m f n", {"nom": "kein:er keine:e kein:es", "acc": "keinen:en keine:e kein:es",
                                   "dat": "keinem:en keiner:en keinem:en"}),
    ),
    adjectives=_german_adjectives("""
        groß klein alt jung schön süß müde/müd grün rot blau weiß schwarz kühl hübsch fröhlich lustig
        dunkel/dunkl teuer/teur heiß böse/bös schwül mutig faul klug dünn dick schwer leicht nass trocken
        bunt fremd berühmt hungrig glücklich traurig ruhig laut leise/leis spät früh hässlich schmal
        blöd zäh gemütlich bräunlich
    """),
    transitive_verbs=_words("""
        sieht kauft findet hört sucht baut liest trinkt isst wäscht trägt öffnet malt vermisst kennt fängt
        verkauft besucht repariert bringt holt packt wählt zählt riecht probiert stiehlt versteckt küsst
        umarmt fotografiert ignoriert entdeckt bewundert schätzt grüßt füttert mag vergisst zerstört gießt
        backt schließt schält
    """),
    intransitive_verbs=_words("""
        schläft läuft lacht wartet schwimmt träumt fällt tanzt singt weint arbeitet ruht spielt pfeift springt
        rennt lächelt schreit kocht schreibt fährt fliegt sitzt steht liegt bleibt verschwindet erscheint
        jubelt seufzt flüstert friert hüpft grübelt übt nickt zögert
    """),
    adverbs=_words("""
        heute morgen oft selten immer nie plötzlich langsam schnell gern wieder draußen früh spät leise
        natürlich übrigens hier dort drinnen gleich sofort glücklicherweise überall
    """),
    degrees=_words("sehr ziemlich wirklich nicht immer total äußerst so"),
    question_words=_words("warum wann wo wie"),
    prepositions=_words("mit bei aus von hinter neben unter auf in vor zu an"),
    contractions={"in dem": "im", "bei dem": "beim", "von dem": "vom", "zu dem": "zum", "zu der": "zur", "an dem": "am"},
    places=_words("""
        München Köln Düsseldorf Österreich Lübeck Nürnberg Zürich Berlin Hamburg Bremen Göttingen Würzburg
        Saarbrücken Tübingen Gießen Fürth Mößingen Passau Jena
    """),
    place_prepositions=_words("in nach aus bei"),
    names=_words("""
        Jürgen Günther Jörg Björn Uwe Käthe Lukas Anna Sören Jörn Bärbel Grete Fritz Heinz Paul Emma Leonie
        Mia Sophie Jonas Felix Lena Hannah Moritz Till Günter Thea Ömer Ülkü
    """),
    numbers=_words("zwei drei vier fünf sechs zehn viele keine"),
    plurals=_words("""
        Äpfel Bücher Häuser Vögel Bäume Füße Straßen Blumen Brötchen Schlüssel Löffel Äste Nüsse Mäuse Gänse
        Kühe Flöße Grüße Würstchen Stühle
    """),
    interjections=_words("hallo danke tschüss bitte genau vielleicht prima schön klar natürlich"),
    day_parts=(),
    templates=(
        (10, "{np_nom} {vi}."),
        (10, "{np_nom} {vt} {np_acc}."),
        (8, "{np_nom} {vi} {adv}."),
        (10, "{np_nom} {vi} {pp}."),
        (6, "{np_nom} {vt} {np_acc} {pp}."),
        (8, "{adv} {vi} {np_nom}."),
        (6, "{adv} {vt} {np_nom} {np_acc}."),
        (6, "{np_nom} ist {adj}."),
        (4, "{np_nom} ist {degree} {adj}."),
        (5, "{vt} {np_nom} {np_acc}?"),
        (4, "{vi} {np_nom} {pp}?"),
        (4, "{wh} {vi} {np_nom}?"),
        (3, "Ja, {np_nom} {vi}."),
        (3, "Nein, {np_nom} {vi} nicht."),
        (3, "{name}, {np_nom} {vi} {adv}."),
        (4, "{np_nom} {vi}, aber {np_nom} {vi}."),
        (3, "{np_nom} {vi}, weil {np_nom} {adj} ist."),
        (3, "{name} {vt} {num} {plural}."),
        (1, 'Das Wort "{noun}" ist {adj}.'),
        (1, '{name} sagt "{interj}".'),
        (1, '"{interj}", sagt {np_nom}.'),
        (1, '{np_nom} heißt "{name}".'),
        (1, "Wie geht's, {name}?"),
        (1, "{adv} gibt's {np_acc}."),
        (1, "Gibt's hier {np_acc}?"),
    ),
)

LEXICONS = {"nl": DUTCH, "de": GERMAN}
