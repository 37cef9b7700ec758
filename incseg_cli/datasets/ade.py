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
    help="ADE20K SceneParsing (ADEChallengeData2016: images/, annotations/{training,validation}/)",
)
