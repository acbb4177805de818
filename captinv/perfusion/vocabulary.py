"""Word lists of the generated covariance corpus (`corpus.py`).

Broad rather than deep: what people and alt texts put into captions and what
users put into prompts (people, animals, things, food, vehicles, buildings,
nature; colours, materials, sizes, shapes, positions; activities; places;
media and photographic terms). Nouns are grouped so that the sentence shapes
can say plausible things ("a man riding a horse", not "a teapot riding a
lake"); a noun is written as its singular and, when irregular, its plural.
"""

from __future__ import annotations

PEOPLE = (
    "man", "woman", "boy", "girl", "child", "baby", "old man", "old woman", "young man", "young woman",
    "person", "couple", "family", "teenager", "student", "teacher", "doctor", "nurse", "chef", "farmer",
    "soldier", "police officer", "firefighter", "businessman", "skateboarder", "surfer", "skier",
    "snowboarder", "tennis player", "baseball player", "soccer player", "runner", "cyclist", "dancer",
    "musician", "guitarist", "singer", "artist", "painter", "photographer", "tourist", "hiker", "fisherman",
    "knight", "wizard", "witch", "princess", "king", "queen", "astronaut", "pirate", "samurai", "ninja",
    "cowboy", "robot", "superhero", "clown", "monk", "bride", "groom", "worker", "waiter", "athlete",
)  # fmt: skip
ANIMALS = (
    "cat", "kitten", "dog", "puppy", "horse", "pony", "cow", "sheep", "goat", "pig", "chicken", "duck",
    "goose", "bird", "parrot", "owl", "eagle", "pigeon", "seagull", "swan", "penguin", "flamingo", "bear",
    "teddy bear", "polar bear", "panda", "elephant", "giraffe", "zebra", "lion", "tiger", "leopard",
    "cheetah", "wolf", "fox", "deer", "rabbit", "squirrel", "mouse", "hamster", "monkey", "gorilla",
    "kangaroo", "koala", "camel", "hippo", "rhino", "crocodile", "turtle", "frog", "snake", "lizard",
    "dolphin", "whale", "shark", "fish", "goldfish", "octopus", "crab", "butterfly", "bee", "ladybug",
    "dragon", "unicorn", "dinosaur", "corgi", "golden retriever", "husky", "poodle", "tabby cat",
)  # fmt: skip
THINGS = (
    "chair", "table", "sofa", "couch", "bed", "lamp", "clock", "vase", "mirror", "bookshelf", "book",
    "laptop", "computer", "keyboard", "phone", "camera", "television", "remote control", "cup", "mug",
    "teapot", "kettle", "bowl", "plate", "glass", "bottle", "wine glass", "fork", "knife", "spoon",
    "umbrella", "backpack", "handbag", "suitcase", "wallet", "watch", "necklace", "ring", "hat", "cap",
    "helmet", "shoe", "sneaker", "boot", "dress", "shirt", "jacket", "coat", "scarf", "sweater", "glasses",
    "guitar", "piano", "violin", "drum", "ball", "kite", "frisbee", "skateboard", "surfboard", "snowboard",
    "tennis racket", "baseball bat", "toy", "doll", "balloon", "candle", "flower pot", "basket", "box",
    "gift", "key", "lock", "door", "window", "fence", "sign", "stop sign", "traffic light", "fire hydrant",
    "bench", "statue", "sculpture", "painting", "poster", "map", "flag", "tent", "ladder", "bucket",
    "sword", "shield", "crown", "robot toy", "globe", "chess board", "pillow", "blanket", "towel", "rug",
    "logo", "icon", "pattern", "banner", "card", "envelope", "notebook", "pencil", "brush", "scissors",
)  # fmt: skip
FOOD = (
    "pizza", "burger", "sandwich", "hot dog", "salad", "soup", "pasta", "sushi", "steak", "cake",
    "cupcake", "donut", "cookie", "bread", "croissant", "pancake", "waffle", "ice cream", "chocolate",
    "apple", "banana", "orange", "lemon", "strawberry", "cherry", "grape", "watermelon", "pineapple",
    "carrot", "broccoli", "tomato", "potato", "onion", "pepper", "mushroom", "egg", "cheese", "rice",
    "noodles", "coffee", "tea", "juice", "wine", "beer", "cocktail", "smoothie", "pie", "taco", "fries",
)  # fmt: skip
VEHICLES = (
    "car", "truck", "bus", "train", "tram", "motorcycle", "bicycle", "scooter", "van", "taxi", "jeep",
    "tractor", "boat", "sailboat", "ship", "canoe", "yacht", "airplane", "jet", "helicopter",
    "hot air balloon", "rocket", "spaceship", "submarine", "race car", "sports car", "vintage car",
    "fire truck", "ambulance", "police car", "school bus", "double decker bus", "steam train",
)  # fmt: skip
BUILDINGS = (
    "house", "cottage", "cabin", "castle", "palace", "church", "cathedral", "temple", "mosque", "tower",
    "skyscraper", "lighthouse", "barn", "windmill", "bridge", "building", "apartment building", "hotel",
    "restaurant", "cafe", "shop", "store", "market", "station", "airport", "stadium", "museum", "library",
    "school", "hospital", "factory", "warehouse", "farmhouse", "villa", "pagoda", "ruin", "pyramid",
)  # fmt: skip
NATURE = (
    "tree", "palm tree", "pine tree", "oak tree", "flower", "rose", "sunflower", "tulip", "daisy", "lily",
    "cactus", "plant", "bush", "grass", "leaf", "mountain", "hill", "volcano", "river", "lake", "waterfall",
    "ocean", "sea", "beach", "island", "forest", "jungle", "desert", "canyon", "valley", "field", "meadow",
    "cave", "glacier", "cloud", "rainbow", "sunset", "sunrise", "moon", "star", "planet", "galaxy",
    "storm", "snowflake", "rock", "stone", "crystal", "shell", "wave", "garden", "park", "pond",
)  # fmt: skip
ROOMS = (
    "kitchen", "living room", "bedroom", "bathroom", "dining room", "office", "classroom", "hallway",
    "studio", "garage", "attic", "basement", "library", "bakery", "workshop", "lobby", "gym",
)  # fmt: skip
SHAPES = (
    "circle", "square", "triangle", "diamond", "star", "heart", "rectangle", "oval", "hexagon", "cube",
    "sphere", "cone", "cylinder", "pyramid", "spiral", "line", "dot", "cross", "arrow", "ring",
)  # fmt: skip

COLOURS = (
    "red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "black", "grey", "gray",
    "brown", "beige", "gold", "golden", "silver", "navy", "turquoise", "teal", "violet", "magenta",
    "maroon", "olive", "lime", "light blue", "dark green", "bright red", "pale yellow", "deep purple",
)  # fmt: skip
QUALITIES = (
    "small", "big", "large", "tiny", "huge", "giant", "little", "tall", "short", "long", "wide", "narrow",
    "old", "new", "young", "ancient", "modern", "vintage", "antique", "futuristic", "rustic", "classic",
    "wooden", "metal", "glass", "plastic", "stone", "brick", "leather", "paper", "ceramic", "marble",
    "golden", "rusty", "shiny", "dirty", "clean", "broken", "wet", "dry", "frozen", "fluffy", "furry",
    "soft", "hard", "smooth", "rough", "striped", "spotted", "checkered", "colorful", "dark", "bright",
    "pale", "glowing", "transparent", "empty", "full", "open", "closed", "cute", "beautiful", "ugly",
    "happy", "sad", "angry", "sleepy", "scary", "funny", "elegant", "simple", "fancy", "cozy", "busy",
    "quiet", "crowded", "abandoned", "hidden", "famous", "delicious", "fresh", "hot", "cold", "sunny",
    "foggy", "snowy", "rainy", "cloudy", "misty", "lush", "dry", "wild", "tame", "magical", "mysterious",
)  # fmt: skip
ACTIONS = (
    "sitting", "standing", "lying", "sleeping", "running", "walking", "jumping", "flying", "swimming",
    "eating", "drinking", "playing", "smiling", "laughing", "looking up", "looking at the camera",
    "waiting", "resting", "posing", "dancing", "reading", "climbing", "hiding", "floating", "grazing",
)  # fmt: skip
HANDLING = (
    "holding", "carrying", "riding", "eating", "wearing", "throwing", "catching", "pushing", "pulling",
    "painting", "looking at", "playing with", "sitting on", "standing next to", "walking with",
    "leaning on", "reaching for", "feeding", "hugging", "watching",
)  # fmt: skip
RELATIONS = (
    "on", "on top of", "under", "next to", "beside", "behind", "in front of", "near", "inside", "in",
    "above", "below", "against", "around", "across", "along", "by",
)  # fmt: skip
PLACES = (
    "on a table", "on the table", "on a wooden table", "in a forest", "on the beach", "in the snow",
    "in a city", "in the city", "in space", "under water", "on a mountain", "in a garden", "in a kitchen",
    "at night", "at sunset", "at dawn", "in the rain", "in a field of flowers", "next to a river",
    "in a library", "on a street", "on the street", "in the desert", "in a cafe", "on a boat",
    "in a studio", "on the moon", "in a living room", "by the window", "in a park", "on a rooftop",
    "in a cave", "at the market", "in a museum", "on the grass", "on a white background",
    "on a black background", "on a blue background", "against a brick wall", "in a field",
    "on a sidewalk", "in a parking lot", "at the airport", "at the train station", "in a classroom",
    "in an office", "on a bed", "on a couch", "on the floor", "in a bowl", "on a plate", "in a box",
    "in the water", "in the sky", "in the air", "on the road", "near the ocean", "in the mountains",
    "in the woods", "in a meadow", "by a lake", "on a hill", "on a farm", "at a zoo", "in a cage",
    "in a shop window", "on a shelf", "on a counter", "in the corner", "on the left", "on the right",
    "at the top", "at the bottom", "in the centre", "in the center", "in the middle", "in the background",
    "in the foreground", "at the edge", "in a snowy landscape", "in a busy street", "in an empty room",
)  # fmt: skip
MEDIA = (
    "photograph", "photo", "oil painting", "watercolor", "watercolour painting", "digital art",
    "pencil sketch", "charcoal drawing", "3d render", "illustration", "vector illustration", "cartoon",
    "anime", "comic", "concept art", "pixel art", "low poly", "sculpture", "mosaic", "stained glass",
    "woodcut", "poster", "postcard", "sticker", "logo", "icon", "diagram", "painting", "drawing", "print",
)  # fmt: skip
STYLE_TAGS = (
    "highly detailed", "studio lighting", "cinematic lighting", "soft light", "natural light",
    "golden hour", "dramatic shadows", "bokeh", "shallow depth of field", "35mm film", "macro",
    "wide angle", "aerial view", "close-up", "long exposure", "black and white", "sepia", "high contrast",
    "pastel colors", "vivid colors", "muted colors", "sharp focus", "8k", "4k", "hdr", "award winning",
    "trending on artstation", "unreal engine", "octane render", "matte painting", "minimalist",
    "surreal", "impressionist", "art nouveau", "cyberpunk", "steampunk", "fantasy", "realistic",
    "photorealistic", "stylized", "flat colors", "isometric", "symmetrical", "centered", "top view",
    "side view", "front view", "portrait", "landscape", "professional photo", "stock photo", "film grain",
)  # fmt: skip
NUMBERS = ("two", "three", "four", "five", "several", "many", "a few", "a group of", "a pair of", "some")
