"""ADE20K (ADEChallengeData2016, SceneParsing): 150 classes, label 0 = other."""

from __future__ import annotations

from incseg_cli.datasets.layout import SubdirLayout
from incseg_cli.datasets.base import DatasetInfo, bit_palette

CLASS_NAMES: tuple[str, ...] = ("other",) + tuple((
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
).split(","))
assert len(CLASS_NAMES) == 151

STANDARD_TASKS = ("offline", "100-50", "100-10", "50-50")
EXPECTED_COUNTS = {"train": 20210, "val": 2000}


class ADELayout(SubdirLayout):
    """ADEChallengeData2016 (SceneParsing, 150 classes; label 0 = other)."""

    dataset = "ade"
    expected_counts = EXPECTED_COUNTS
    SUBDIRS = {"train": "training", "val": "validation"}
    ROOT_HINT = "ADEChallengeData2016"


# MiB's tasks.py tasks_ade orders b and c (datasets/orders.py): "50b"'s steps 0 and 1, then
# "100-10b"'s steps 1..5; "100-50b" holds the same sets.
ADE_ORDERS: dict[str, tuple[int, ...]] = {
    "mib-b": (
        1, 9, 14, 18, 22, 24, 25, 27, 28, 29, 32, 38, 42, 45, 46, 47, 48, 49, 54, 56, 58, 61, 62, 63, 69, 74, 75,
        76, 77, 81, 82, 84, 90, 93, 96, 100, 103, 104, 109, 117, 119, 121, 123, 128, 129, 130, 134, 135, 136, 144,
        3, 5, 6, 8, 10, 12, 13, 19, 21, 23, 26, 31, 33, 34, 36, 39, 40, 43, 44, 53, 55, 57, 60, 70, 71, 80, 86, 87,
        91, 95, 99, 101, 105, 106, 107, 113, 116, 120, 125, 126, 131, 132, 133, 140, 142, 143, 147, 148, 149, 150,
        11, 16, 50, 64, 66, 73, 89, 92, 145, 146, 30, 37, 51, 52, 72, 85, 98, 114, 115, 138,
        2, 35, 65, 97, 110, 111, 112, 118, 124, 141, 4, 7, 15, 41, 67, 78, 79, 88, 108, 139,
        17, 20, 59, 68, 83, 94, 102, 122, 127, 137,
    ),
    "mib-c": (
        5, 10, 11, 12, 13, 16, 17, 19, 20, 23, 27, 28, 30, 31, 32, 33, 37, 43, 46, 52, 56, 57, 65, 66, 69, 70, 74,
        76, 77, 79, 82, 83, 86, 87, 105, 109, 110, 111, 119, 128, 129, 132, 133, 134, 138, 142, 143, 144, 146, 147,
        1, 6, 8, 9, 14, 24, 25, 26, 29, 34, 35, 36, 40, 41, 44, 45, 48, 50, 54, 61, 63, 67, 68, 71, 78, 81, 84, 85,
        90, 94, 95, 96, 97, 98, 99, 102, 106, 112, 114, 115, 118, 120, 121, 123, 124, 126, 135, 136, 139, 149,
        3, 4, 7, 18, 39, 64, 73, 101, 113, 137, 47, 51, 55, 60, 62, 80, 116, 127, 140, 148,
        22, 42, 49, 58, 59, 89, 91, 92, 108, 125, 2, 38, 53, 100, 104, 117, 130, 131, 141, 145,
        15, 21, 72, 75, 88, 93, 103, 107, 122, 150,
    ),
}


INFO = DatasetInfo(
    name="ade",
    class_names=CLASS_NAMES,
    palette=bit_palette(),
    layout=ADELayout,  # called as (root, label_space)
    foreground=150,
    standard_tasks=STANDARD_TASKS,
    preset="ade",
    recipe={"epochs": 60},
    step_recipe={"lr": 1e-3},
    expected_counts=EXPECTED_COUNTS,
    orders=ADE_ORDERS,
    help="ADE20K SceneParsing (ADEChallengeData2016: images/, annotations/{training,validation}/)",
)
