"""Label spaces: the class names of each dataset, indexed by the label id stored in masks."""

from __future__ import annotations

VOC = (
    "background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse "
    "motorbike person pottedplant sheep sofa train tvmonitor"
).split()

# COCO-Stuff "thing" ids as they appear in the label PNGs (id 0 = background/stuff, 255 = ignore).
# Ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 and 91 are unused and never occur.
COCO_THINGS: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}
COCO = ["background"] + [COCO_THINGS.get(i, f"unused-{i}") for i in range(1, 92)]

# VOC class -> COCO id (WILSON make_cocovoc.py), used to read VOC masks in COCO ids.
VOC_TO_COCO: dict[int, int] = {
    0: 0, 1: 5, 2: 2, 3: 16, 4: 9, 5: 44, 6: 6, 7: 3, 8: 17, 9: 62, 10: 21, 11: 67, 12: 18,
    13: 19, 14: 4, 15: 1, 16: 64, 17: 20, 18: 63, 19: 7, 20: 72,
}

ADE = ["other"] + (
    "wall,building,sky,floor,tree,ceiling,road,bed,windowpane,grass,cabinet,sidewalk,person,"
    "earth,door,table,mountain,plant,curtain,chair,car,water,painting,sofa,shelf,house,sea,"
    "mirror,rug,field,armchair,seat,fence,desk,rock,wardrobe,lamp,bathtub,railing,cushion,base,"
    "box,column,signboard,chest of drawers,counter,sand,sink,skyscraper,fireplace,refrigerator,"
    "grandstand,path,stairs,runway,case,pool table,pillow,screen door,stairway,river,bridge,"
    "bookcase,blind,coffee table,toilet,flower,book,hill,bench,countertop,stove,palm,"
    "kitchen island,computer,swivel chair,boat,bar,arcade machine,hovel,bus,towel,light,truck,"
    "tower,chandelier,awning,streetlight,booth,television receiver,airplane,dirt track,apparel,"
    "pole,land,bannister,escalator,ottoman,bottle,buffet,poster,stage,van,ship,fountain,"
    "conveyer belt,canopy,washer,plaything,swimming pool,stool,barrel,basket,waterfall,tent,bag,"
    "minibike,cradle,oven,ball,food,step,tank,trade name,microwave,pot,animal,bicycle,lake,"
    "dishwasher,screen,blanket,sculpture,hood,sconce,vase,traffic light,tray,ashcan,fan,pier,"
    "crt screen,plate,monitor,bulletin board,shower,radiator,glass,clock,flag"
).split(",")
assert len(ADE) == 151 and len(VOC) == 21

LABEL_SPACES: dict[str, list[str]] = {"voc": VOC, "coco": COCO, "ade": ADE}
IGNORE_INDEX = 255
